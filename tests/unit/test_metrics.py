"""Metric functions against hand-computed cases (trl_ssft.eval.metrics)."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from trl_ssft.eval import metrics as M


def qnr(nested):
    """[Q][N][R] nested list -> object array (keeps None and strings)."""
    arr = np.empty((len(nested), len(nested[0]), len(nested[0][0])), dtype=object)
    for q, a in enumerate(nested):
        for i, b in enumerate(a):
            for r, v in enumerate(b):
                arr[q, i, r] = v
    return arr


# ---------------------------------------------------------------- vote
def test_majority_vote_plain_and_none():
    assert M.majority_vote(["3", "5", "5", None, None, None]) == "5"  # None is not a vote
    assert M.majority_vote([None, None]) is None
    assert M.majority_vote([]) is None


def test_majority_vote_tie_goes_to_first_seen():
    assert M.majority_vote(["7", "9", "9", "7"]) == "7"
    assert M.majority_vote(["9", "7", "7", "9"]) == "9"
    assert M.majority_vote([None, "b", "a", "a", "b"]) == "b"


def test_majority_vote_with_equality_classes():
    same_number = lambda a, b: float(a) == float(b)  # noqa: E731
    # "0.5" and ".5" form one class of 2, beating "2" (1) and "1" (1); the representative is the first member
    assert M.majority_vote(["2", "0.5", "1", ".5"], same_number) == "0.5"
    assert M.vote_counts(["2", "0.5", "1", ".5"], same_number) == [("2", 1), ("0.5", 2), ("1", 1)]


# ---------------------------------------------------------------- pass@k
def test_pass_at_k_hand_values():
    assert M.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert M.pass_at_k(4, 1, 2) == pytest.approx(1 - comb(3, 2) / comb(4, 2))  # 1 - 3/6 = 0.5
    assert M.pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
    assert M.pass_at_k(5, 0, 3) == 0.0
    assert M.pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k = 3: every 3-subset holds a correct sample


def test_pass_at_k_larger_than_samples():
    # k > n: the value at k = n (any correct sample -> 1), documented as a lower bound
    assert M.pass_at_k(3, 1, 10) == 1.0
    assert M.pass_at_k(3, 0, 10) == 0.0
    with pytest.raises(ValueError):
        M.pass_at_k(3, 1, 0)
    with pytest.raises(ValueError):
        M.pass_at_k(3, 4, 1)


def test_pass_at_k_dataset():
    correct = np.array([[[1, 0], [0, 0]], [[1, 1], [1, 1]]], dtype=bool)  # Q=2, N=2, R=2
    # question 0: n=4, c=1 -> pass@2 = 0.5; question 1: c=4 -> 1
    assert M.pass_at_k_dataset(correct, 2) == pytest.approx(0.75)
    assert M.pass_at_k_dataset(correct, 1) == pytest.approx((0.25 + 1) / 2)


# ---------------------------------------------------------------- pass@1
def test_pass1_per_token_and_chosen():
    correct = np.zeros((2, 3, 2), dtype=bool)
    correct[0, 0, :] = True
    correct[1, 0, 0] = True
    correct[:, 2, :] = True
    assert M.pass1_per_token(correct).tolist() == pytest.approx([0.75, 0.0, 1.0])
    assert M.pass1(correct, 0) == pytest.approx(0.75)


# ---------------------------------------------------------------- cons@N / cons@k
def test_cons_at_n_rounds_and_tie():
    # Q=2, N=3, R=2. gold: "4", "8"
    answers = qnr([
        [["4", "4"], ["4", "5"], ["6", "5"]],   # round 0: 4,4,6 -> 4 ok; round 1: 4,5,5 -> 5 wrong
        [["8", "1"], ["2", None], [None, None]],  # round 0: 8,2 tie -> 8 (token 1 first) ok; round 1: 1 wrong
    ])
    assert M.cons_at_n(answers, ["4", "8"]) == pytest.approx(2 / 4)


def test_cons_at_k_groups_round_robin():
    answers = qnr([[["1", "2"], ["2", "3"]]])  # Q=1, N=2, R=2: round-robin order 1,2,2,3
    assert M.cons_at_k(answers, ["2"], 4) == 1.0  # one group: 1,2,2,3 -> 2
    assert M.cons_at_k(answers, ["1"], 2) == pytest.approx(0.5)  # groups (1,2)->1 tie first; (2,3)->2
    assert M.cons_at_k(answers, ["1"], 3) == 0.0  # one group (1,2,2) -> 2; the 4th sample is unused
    with pytest.raises(ValueError):
        M.cons_at_k(answers, ["1"], 5)


def test_cons_at_k_one_group_vote():
    answers = qnr([[["1", "2"], ["2", "3"]]])
    assert M.cons_at_k(answers, ["2"], 3) == 1.0
    assert M.cons_at_k(answers, ["1"], 1) == pytest.approx(1 / 4)  # k=1 is mean accuracy


def test_cons_with_custom_equality():
    answers = qnr([[["0.5"], ["1/2"], ["3"]]])
    eq = lambda a, b: {"0.5": 0.5, "1/2": 0.5, "3": 3.0}.get(a) == {"0.5": 0.5, "1/2": 0.5, "3": 3.0}.get(b)  # noqa
    assert M.cons_at_n(answers, ["1/2"], eq) == 1.0
    assert M.cons_at_n(answers, ["1/2"]) == 0.0  # plain ==: three different answers, "0.5" wins the tie


# ---------------------------------------------------------------- diversity and modes
MODES = ("A", "B", "C")


def test_distinct_per_question_ignores_unrecognised():
    modes = qnr([
        [["A", "A"], ["B", "A"], ["other", None]],  # round 0: {A,B} = 2; round 1: {A} = 1
        [["C", "C"], ["C", "B"], ["A", "C"]],        # round 0: {C,A} = 2; round 1: {C,B} = 2
    ])
    assert M.distinct_per_question(modes) == pytest.approx((2 + 1 + 2 + 2) / 4)
    assert M.distinct_per_question(modes, ignore=()) == pytest.approx((3 + 2 + 2 + 2) / 4)


def test_token_mode_table():
    modes = qnr([[["A", "B"], ["other", None]], [["A", "A"], ["C", "zzz"]]])
    table = M.token_mode_table(modes, MODES)
    assert table.tolist() == [[3, 1, 0, 0], [0, 0, 1, 3]]


def test_token_consistency_hand_case():
    # Q=4, N=2, R=1. Token 0: A,A,B,A -> majority A, follows on 3/4. Token 1: B,C,C,other -> C, 2/4
    modes = qnr([[["A"], ["B"]], [["A"], ["C"]], [["B"], ["C"]], [["A"], ["other"]]])
    assert M.token_majority_modes(modes) == ["A", "C"]
    assert M.token_consistency(modes).tolist() == pytest.approx([0.75, 0.5])


def test_token_consistency_rounds_and_ties():
    # Q=2, N=1, R=2: samples A,B | B,A -> tie between A and B, first seen (A) wins; per question 1/2 each
    modes = qnr([[["A", "B"]], [["B", "A"]]])
    assert M.token_majority_modes(modes) == ["A"]
    assert M.token_consistency(modes).tolist() == pytest.approx([0.5])
    # a token with no recognised sample scores 0
    assert M.token_consistency(qnr([[["other"]]])).tolist() == [0.0]
