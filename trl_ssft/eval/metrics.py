"""Metrics of parallel generation with forking tokens (definitions: METHOD.md and docs/metrics.md).

Conventions: an evaluation holds, for Q questions, N forking tokens and R rounds, one sample per
(question, token, round). Per-sample values are given as nested lists or numpy arrays of shape
``[Q, N, R]``:

- ``correct`` [Q, N, R] bool: the sample's extracted answer equals the gold answer;
- ``answers`` [Q, N, R] object: the extracted answer (``None`` when none was found);
- ``modes``   [Q, N, R] object: the reasoning mode of the sample (``None`` / ``"other"``: unrecognised).

Everything here is pure Python / numpy (no torch), and deterministic.

Tie rule of every vote (`majority_vote`, `majority_label`): among the most frequent values, the one
whose first occurrence comes first in the input order wins. Missing answers (``None``) follow the
``missing`` rule: ``"skip"`` (default) leaves them out of the vote; ``"vote"`` (the authors' code,
lighteval, lm-evaluation-harness) counts them as one more answer class, which can win and then
scores 0. In `cons_at_k` the input order is the round-robin order token 1, 2, ..., N of round 1,
then of round 2, ..., so a tie goes to the answer of the lowest-numbered token of the earliest round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import comb

import numpy as np

Equal = Callable[[str, str], bool]

UNRECOGNISED = (None, "other")
MISSING_RULES = ("skip", "vote")
CONS_ESTIMATORS = ("groups", "first-k")


def _eq(a, b, equal: Equal | None) -> bool:
    return a == b if equal is None else bool(equal(a, b))


def _check_missing(missing: str) -> None:
    if missing not in MISSING_RULES:
        raise ValueError(f"missing must be one of {MISSING_RULES}, got {missing!r}")


def vote_counts(values: Sequence, equal: Equal | None = None, missing: str = "skip") -> list[tuple[object, int]]:
    """Group `values` into classes of equal answers: ``[(representative, count), ...]`` in first-seen order.

    The representative of a class is its first member. `equal` defaults to ``==``; a math-aware
    equality (e.g. `answers.answers_equal`) puts "1/2" and "0.5" in one class. ``None`` (no answer)
    is skipped with ``missing="skip"``; with ``missing="vote"`` all ``None`` form one class.
    """
    _check_missing(missing)
    classes: list[list] = []
    for v in values:
        if v is None:
            if missing == "skip":
                continue
            c = next((c for c in classes if c[0] is None), None)
        else:
            c = next((c for c in classes if c[0] is not None and _eq(c[0], v, equal)), None)
        if c is None:
            classes.append([v, 1])
        else:
            c[1] += 1
    return [(c[0], c[1]) for c in classes]


def majority_vote(values: Sequence, equal: Equal | None = None, missing: str = "skip"):
    """The most frequent value of `values` (ties: first seen wins); None if there is none.

    ``missing="skip"``: ``None`` is not a vote. ``missing="vote"``: ``None`` is a vote and can win
    (the result is then None: a missing answer, scored wrong).
    """
    counts = vote_counts(values, equal, missing)
    if not counts:
        return None
    best = max(c for _, c in counts)
    return next(v for v, c in counts if c == best)


def majority_label(values: Sequence, ignore: Sequence = ()) -> object:
    """`majority_vote` with ``==`` over the values not in `ignore` (ties: first seen wins)."""
    return majority_vote([None if v in ignore else v for v in values])


# ---------------------------------------------------------------- accuracy
def pass1_per_token(correct) -> np.ndarray:
    """Pass@1 of each token: mean correctness over questions and rounds. [Q, N, R] -> [N]."""
    c = np.asarray(correct, dtype=float)
    return c.mean(axis=(0, 2))


def pass1(correct, token: int) -> float:
    """Pass@1 when every question is started with forking token `token` (0-based index). [Q, N, R] -> float."""
    return float(pass1_per_token(correct)[token])


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    In an evaluation the n samples of a question pool all tokens and rounds (`pass_at_k_dataset`).

    k > n: the estimator is undefined (fewer samples than k). We return the value at k = n, i.e.
    1.0 if any sample is correct else 0.0: the empirical "at least one of all n samples is correct",
    a lower bound of the true Pass@k (Pass@k grows with k). k < 1 raises ValueError.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if n == 0:
        return 0.0
    k = min(k, n)
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_at_k_dataset(correct, k: int) -> float:
    """Mean over questions of `pass_at_k` with n = N * R samples per question. [Q, N, R] -> float."""
    c = np.asarray(correct, dtype=bool)
    q = c.shape[0]
    flat = c.reshape(q, -1)
    return float(np.mean([pass_at_k(flat.shape[1], int(row.sum()), k) for row in flat])) if q else 0.0


# ---------------------------------------------------------------- voting
def _round_robin(values_q) -> list:
    """[N, R] values of one question -> list in the order (round 1: token 1..N), (round 2: ...), ..."""
    arr = np.asarray(values_q, dtype=object)
    return [arr[i, r] for r in range(arr.shape[1]) for i in range(arr.shape[0])]


def _vote_scores(flat: list, g, k: int, equal: Equal | None, estimator: str, missing: str) -> list[bool]:
    """Scores of the k-sample votes of one question's round-robin samples `flat` under `estimator`."""
    if k < 1 or k > len(flat):
        raise ValueError(f"k={k} must be between 1 and the number of samples per question ({len(flat)})")
    if estimator == "groups":
        starts = range(0, len(flat) - k + 1, k)
    elif estimator == "first-k":
        starts = range(1)
    else:
        raise ValueError(f"estimator must be one of {CONS_ESTIMATORS}, got {estimator!r}")
    out = []
    for s in starts:
        v = majority_vote(flat[s: s + k], equal, missing)
        out.append(v is not None and g is not None and _eq(g, v, equal))
    return out


def cons_at_k(answers, gold: Sequence, k: int, equal: Equal | None = None, estimator: str = "groups",
              missing: str = "skip") -> float:
    """Cons@k: majority vote over k samples spread across tokens, scored against `gold`.

    For each question the N * R samples are laid out round-robin (tokens 1..N of round 1, then of
    round 2, ...). ``estimator="groups"`` (default) cuts them into floor(N * R / k) disjoint groups of
    k consecutive samples, each group votes, and the result is the mean over groups and questions
    (with k = N each group is one round with one sample per token: native Cons@N). ``"first-k"``
    votes once over the first k samples (the paper's Cons@32, the authors' ``maj@32``; their order is
    token-major, ours interleaved). A vote is correct when it equals the gold answer; `missing`
    (``skip`` / ``vote``) is the rule for samples without an answer (`majority_vote`).
    k > N * R raises ValueError. answers: [Q, N, R]; gold: [Q].
    """
    _check_missing(missing)
    scores: list[bool] = []
    for q, g in enumerate(gold):
        scores += _vote_scores(_round_robin(answers[q]), g, k, equal, estimator, missing)
    return float(np.mean(scores)) if scores else 0.0


def cons_at_n(answers, gold: Sequence, equal: Equal | None = None, missing: str = "skip") -> float:
    """Native Cons@N: one sample per distinct token, vote, score; averaged over rounds and questions.

    answers: [Q, N, R] (R rounds). Equals `cons_at_k` with k = N and the ``groups`` estimator (the
    paper's Cons@6: 11 rounds of the 6 tokens, averaged).
    """
    n = np.asarray(answers, dtype=object).shape[1]
    return cons_at_k(answers, gold, n, equal, "groups", missing)


# ---------------------------------------------------------------- diversity and modes
def distinct_per_question(labels, ignore: Sequence = UNRECOGNISED) -> float:
    """Mean number of distinct labels among the N tokens' samples of one round, over questions and rounds.

    labels: [Q, N, R] modes or answers; values in `ignore` (default None and "other") are not counted.
    """
    arr = np.asarray(labels, dtype=object)
    counts = [len({arr[q, i, r] for i in range(arr.shape[1]) if arr[q, i, r] not in ignore})
              for q in range(arr.shape[0]) for r in range(arr.shape[2])]
    return float(np.mean(counts)) if counts else 0.0


def distinct_answers_per_question(answers, equal: Equal | None = None) -> float:
    """Mean number of answer classes among the N tokens' samples of one round, over questions and rounds.

    Classes are those of the vote (`vote_counts` with `equal`): with a math-aware equality ``0.5`` and
    ``\\frac12`` count once. Missing answers are not counted. answers: [Q, N, R] -> float.
    """
    arr = np.asarray(answers, dtype=object)
    counts = [len(vote_counts(list(arr[q, :, r]), equal)) for q in range(arr.shape[0]) for r in range(arr.shape[2])]
    return float(np.mean(counts)) if counts else 0.0


def token_mode_table(modes, mode_names: Sequence[str]) -> np.ndarray:
    """Counts [N, K + 1]: how many samples of token i follow mode k; the last column counts the rest.

    modes: [Q, N, R]; `mode_names` lists the K known modes (anything else goes to the last column).
    """
    arr = np.asarray(modes, dtype=object)
    index = {m: k for k, m in enumerate(mode_names)}
    table = np.zeros((arr.shape[1], len(mode_names) + 1), dtype=np.int64)
    for q in range(arr.shape[0]):
        for i in range(arr.shape[1]):
            for r in range(arr.shape[2]):
                table[i, index.get(arr[q, i, r], len(mode_names))] += 1
    return table


def token_majority_modes(modes, ignore: Sequence = UNRECOGNISED) -> list:
    """Each token's most frequent recognised mode over all its samples (ties: first seen). [Q, N, R] -> [N]."""
    arr = np.asarray(modes, dtype=object)
    return [majority_label(arr[:, i, :].ravel().tolist(), ignore) for i in range(arr.shape[1])]


def token_consistency(modes, ignore: Sequence = UNRECOGNISED) -> np.ndarray:
    """Per-token mode consistency: the fraction of questions on which token i follows its majority mode.

    Token i's majority mode m_i is `token_majority_modes`. On question q the token scores the
    fraction of its R samples whose mode is m_i (with R = 1: 1 if it follows m_i, else 0); the
    result is the mean over questions. An unrecognised sample counts as not following. A token with
    no recognised sample scores 0. [Q, N, R] -> [N].
    """
    arr = np.asarray(modes, dtype=object)
    majority = token_majority_modes(arr, ignore)
    out = np.zeros(arr.shape[1])
    for i, m in enumerate(majority):
        if m is None:
            continue
        out[i] = float(np.mean([[arr[q, i, r] == m for r in range(arr.shape[2])] for q in range(arr.shape[0])]))
    return out
