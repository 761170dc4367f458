"""The scoring rules that move reported numbers (docs/metrics.md), each against hand-computed values.

One test (or a few) per finding of the metric-rules issue: thousands separators only, missing answers
in votes, equivalent forms and the recorded equality, fallback extraction, Pass@k/Cons@k above the
number of samples, the Cons@k estimator, distinct answers as vote classes, multiple choice. The
report-level tests run `evaluate_model` on hand-written sample texts (generation is replaced by a
table lookup), so every number is computed by hand below.
"""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from trl_ssft.eval import answers as A
from trl_ssft.eval import metrics as M


def qnr(nested):
    """[Q][N][R] nested list -> object array (keeps None and strings)."""
    arr = np.empty((len(nested), len(nested[0]), len(nested[0][0])), dtype=object)
    for q, a in enumerate(nested):
        for i, b in enumerate(a):
            for r, v in enumerate(b):
                arr[q, i, r] = v
    return arr


def fake_eval(monkeypatch, texts, golds, **kw) -> dict:
    """`evaluate_model` on hand-written samples: ``texts[q][i][r]`` is the text of question q, token i, round r."""
    from trl_ssft.eval import evaluate as E
    from trl_ssft.eval import sampling as S
    from trl_ssft.eval.inference import SSFTModel

    n, r_ = len(texts[0]), len(texts[0][0])
    tokens = [f"<think{i + 1}>" for i in range(n)]
    # each sample's seed depends only on (seed, question, slot, round): the fake generator reads the key from it
    keys = {S.sample_seed(0, q, i, r): (q, i, r) for q in range(len(texts)) for i in range(n) for r in range(r_)}

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            q, i, r = ids
            return texts[q][i][r]

    def prompts(tok, prompt, fork_tokens, layout=None):  # the prompt "q7" of question 7 -> [7, token index]
        return [[int(prompt[-1]["content"][1:]), i] for i in range(len(fork_tokens))]

    def generate(sm, prompt_ids, seeds, on_done, **gen):
        on_done([(j, list(keys[s])) for j, s in enumerate(seeds)])

    monkeypatch.setattr(E, "fork_prompt_ids", prompts)
    monkeypatch.setattr(S, "_generate", generate)
    sm = SSFTModel(model=None, tokenizer=Tok(), fork_tokens=tokens, fork_token_ids=list(range(n)),
                   pass1_token=tokens[0])
    rows = [{"prompt": f"q{k}", "answer": g} for k, g in enumerate(golds)]
    return E.evaluate_model(sm, rows, rounds=r_, progress=False, mode_classifier="none", **kw)


# ---------------------------------------------------------------- 1. commas
@pytest.mark.parametrize("use_mv", [False, True])
def test_only_thousands_separators_are_merged(use_mv):
    if use_mv and not A.math_verify_available():
        pytest.skip("math_verify not installed")
    # a pair (or a list) is not a number with a thousands separator
    assert not A.answers_equal("12", "1,2", use_mv)
    assert not A.answers_equal("-21", "-2,1", use_mv)
    assert not A.answers_equal("35", "3, 5", use_mv)
    # real thousands separators still merge
    assert A.answers_equal("1000", "1,000", use_mv)
    assert A.answers_equal("-1234567", "-1,234,567", use_mv)
    assert A.answers_equal("1234.5", "1,234.50", use_mv)


def test_normalize_answer_keeps_non_thousands_commas():
    assert A.normalize_answer("1,2") == "1,2"
    assert A.normalize_answer("3, 5") == "3,5"
    assert A.normalize_answer("12,34") == "12,34"
    assert A.normalize_answer("1,234,567") == "1234567"
    # a wrong "1,2" no longer joins the class of the gold "12": three classes of one, "12" is first
    assert M.vote_counts(["12", "1,2", "3"], A.make_equal(False)) == [("12", 1), ("1,2", 1), ("3", 1)]


# ---------------------------------------------------------------- 2. missing answers
def test_missing_answer_rule_in_votes():
    votes = ["5", None, None]
    assert M.majority_vote(votes) == "5"                      # default: skip (None is not a vote)
    assert M.majority_vote(votes, missing="skip") == "5"
    assert M.majority_vote(votes, missing="vote") is None     # the authors' rule: None wins 2 to 1
    assert M.vote_counts(["5", None, "7", None], missing="vote") == [("5", 1), (None, 2), ("7", 1)]
    assert M.majority_vote([None, "5"], missing="vote") is None  # tie: first seen
    assert M.majority_vote(["5", None], missing="vote") == "5"
    with pytest.raises(ValueError):
        M.majority_vote(votes, missing="drop")


def test_missing_answer_rule_in_cons():
    # Q=1, N=3, R=2, gold 5. Round 0: 5, None, None -> skip: 5 (right); vote: None (wrong).
    # Round 1: 5, 5, None -> 5 under both rules.
    answers = qnr([[["5", "5"], [None, "5"], [None, None]]])
    assert M.cons_at_n(answers, ["5"]) == 1.0
    assert M.cons_at_n(answers, ["5"], missing="skip") == 1.0
    assert M.cons_at_n(answers, ["5"], missing="vote") == pytest.approx(0.5)
    assert M.cons_at_k(answers, ["5"], 6, missing="vote") == 1.0  # 5, None, None, 5, 5, None: 3-3 tie, 5 first


TEXTS_MISSING = [[["\\boxed{5}", "\\boxed{5}"], ["no idea", "\\boxed{5}"], ["no idea", "no idea"]]]


def test_report_states_missing_answer_rule(monkeypatch, capsys):
    from trl_ssft.eval.report import print_report

    skip = fake_eval(monkeypatch, TEXTS_MISSING, ["5"])
    vote = fake_eval(monkeypatch, TEXTS_MISSING, ["5"], missing_answers="vote")
    assert skip["rules"]["missing_answers"] == "skip" and skip["cons_at_n"] == 1.0
    assert vote["rules"]["missing_answers"] == "vote" and vote["cons_at_n"] == pytest.approx(0.5)
    print_report(vote)
    assert "missing answers=vote" in capsys.readouterr().out


# ---------------------------------------------------------------- 3. equivalent forms, recorded equality
@pytest.mark.parametrize("gold, pred", [
    ("\\frac12", "0.5"), ("\\frac{1}{2}", "1/2"), ("30", "30^\\circ"), ("30", "30^{\\circ}"),
    ("3", "x=3"), ("A", "\\text{(A)}"), ("-\\frac{3}{4}", "-0.75"),
])
def test_equivalent_forms_equal_without_math_verify(gold, pred):
    assert A.answers_equal(gold, pred, use_math_verify=False)


def test_equivalent_forms_share_one_vote_class():
    # 1/2 in three forms (3 votes) against 7 (2 votes): the 1/2 class wins even with string equality
    votes = ["7", "\\frac12", "0.5", "1/2", "7"]
    assert M.majority_vote(votes, A.make_equal(False)) == "\\frac12"
    assert M.cons_at_n(qnr([[[v] for v in votes]]), ["1/2"], A.make_equal(False)) == 1.0
    assert not A.answers_equal("2", "x=3", use_math_verify=False)


def test_math_verify_is_installed_and_recorded(monkeypatch):
    assert A.math_verify_available(), "math-verify belongs to the eval installation (pip install 'trl-ssft[eval]')"
    assert A.equality_name() == "math-verify"
    assert A.equality_name(False) == "string"
    assert A.equality_name(None, choices="ABCD") == "choice-letter"
    texts = [[["\\boxed{0.5}"], ["\\boxed{\\frac12}"]]]
    assert fake_eval(monkeypatch, texts, ["1/2"])["rules"]["equality"] == "math-verify"
    rep = fake_eval(monkeypatch, texts, ["1/2"], math_verify=False)
    assert rep["rules"]["equality"] == "string" and rep["pass1"] == 1.0


# ---------------------------------------------------------------- 4. extraction fallback
@pytest.mark.parametrize("text, boxed, fallback", [
    ("so \\boxed{9}. The final answer is 3.", "9", "9"),                 # \boxed{} first
    ("The final answer is 42. Answer: 7", None, "42"),                 # then "final answer is"
    ("Answer: $7$ apples", None, "7"),                                  # then "Answer:"
    ("we add 3 + 4 = 7 and then multi", None, "7"),                     # then the last number (truncated!)
    ("we get 1,234 in total", None, "1,234"),
    ("no number at all", None, None),
])
def test_fallback_extraction_order(text, boxed, fallback):
    assert A.extract_answer(text) == boxed
    assert A.extract_answer(text, mode="boxed") == boxed
    assert A.extract_answer(text, mode="fallback") == fallback
    with pytest.raises(ValueError):
        A.extract_answer(text, mode="last")


def test_report_states_extraction(monkeypatch):
    # gold 7: boxed finds one of two answers; the fallback also credits the truncated text
    texts = [[["\\boxed{7}"], ["3 + 4 = 7 and the"]]]
    boxed = fake_eval(monkeypatch, texts, ["7"])
    fallback = fake_eval(monkeypatch, texts, ["7"], extract="fallback")
    assert boxed["rules"]["extraction"] == "boxed" and boxed["pass1_per_token"] == {"<think1>": 1.0, "<think2>": 0.0}
    assert fallback["rules"]["extraction"] == "fallback" and fallback["pass1_per_token"]["<think2>"] == 1.0


# ---------------------------------------------------------------- 5. k above the samples
def test_pass_and_cons_at_k_above_samples_are_marked(monkeypatch, capsys):
    from trl_ssft.eval.report import print_report

    # N=3, R=2: 6 samples per question, 3 correct -> Pass@1 = 3/6, Pass@6 = 1; k = 8 has no value
    rep = fake_eval(monkeypatch, TEXTS_MISSING, ["5"], pass_k=[1, 6, 8], cons_k=[6, 8])
    assert rep["samples_per_question"] == 6
    assert rep["pass_at_k"] == {"1": pytest.approx(0.5), "6": 1.0, "8": None}
    assert rep["cons_at_k"] == {"6": 1.0, "8": None}
    print_report(rep)
    out = capsys.readouterr().out
    assert "Pass@8: n/a (k > 6 samples)" in out and "Cons@8: n/a (k > 6 samples)" in out
    assert "Pass@6: 100.0" in out


# ---------------------------------------------------------------- 6. the Cons@k estimator
# Q=1, N=2, R=3; round-robin order (t1 r1, t2 r1, t1 r2, t2 r2, t1 r3, t2 r3) = 1, 2, 1, 3, 2, 2; gold 2
CONS = [[["1", "1", "2"], ["2", "3", "2"]]]


@pytest.mark.parametrize("k, groups, first_k", [
    (2, 1 / 3, 0.0),   # groups (1,2)->1 tie, (1,3)->1, (2,2)->2: 1/3; first-k (1,2)->1
    (3, 0.5, 0.0),     # groups (1,2,1)->1, (3,2,2)->2; first-k (1,2,1)->1
    (6, 1.0, 1.0),     # one group: 2 x3 beats 1 x2
])
def test_cons_estimators(k, groups, first_k):
    answers = qnr(CONS)
    assert M.cons_at_k(answers, ["2"], k) == pytest.approx(groups)  # default: groups
    assert M.cons_at_k(answers, ["2"], k, estimator="groups") == pytest.approx(groups)
    assert M.cons_at_k(answers, ["2"], k, estimator="first-k") == pytest.approx(first_k)


def test_report_states_cons_estimator(monkeypatch, capsys):
    from trl_ssft.eval.report import print_report

    texts = [[[f"\\boxed{{{a}}}" for a in tok] for tok in CONS[0]]]
    groups = fake_eval(monkeypatch, texts, ["2"], cons_k=[2])
    first = fake_eval(monkeypatch, texts, ["2"], cons_k=[2], cons_estimator="first-k")
    assert groups["rules"]["cons_estimator"] == "groups" and groups["cons_at_k"]["2"] == pytest.approx(1 / 3)
    assert first["rules"]["cons_estimator"] == "first-k" and first["cons_at_k"]["2"] == 0.0
    assert "pooled" in first["rules"]["pass_at_k"]
    print_report(first)
    assert "Cons@k estimator=first-k" in capsys.readouterr().out


# ---------------------------------------------------------------- 7. distinct answers
def test_distinct_answers_are_vote_classes(monkeypatch):
    # one round: 1/2 in three forms and 3 -> 2 classes (raw strings: 4); second question: 5, 5.0, none -> 1
    answers = qnr([[["\\frac12"], ["0.5"], ["1/2"], ["3"]], [["5"], ["5.0"], [None], [None]]])
    assert M.distinct_answers_per_question(answers, A.make_equal(False)) == pytest.approx((2 + 1) / 2)
    assert M.distinct_answers_per_question(answers) == pytest.approx((4 + 2) / 2)  # plain ==
    texts = [[[f"\\boxed{{{a}}}"] for a in ("\\frac12", "0.5", "1/2", "3")]]
    assert fake_eval(monkeypatch, texts, ["1/2"])["distinct_answers_per_question"] == 2.0


# ---------------------------------------------------------------- 8. multiple choice
@pytest.mark.parametrize("text, letter", [
    ("... so \\boxed{B}", "B"),
    ("\\boxed{\\text{(C)}}", "C"),
    ("\\boxed{(d)}", "D"),
    ("The answer is (A).", "A"),
    ("Answer: B", "B"),
    ("A is wrong, so the answer is C", "C"),
    ("(A) looks plausible", None),        # a mentioned option is not an answer
    ("\\boxed{42}", None),
])
def test_extract_choice(text, letter):
    assert A.extract_choice(text) == letter


def test_multiple_choice_votes_over_letters(monkeypatch):
    # four different texts, three pick A: the letter vote is A (a vote over raw texts would be the first text)
    texts = [[["\\boxed{A}"], ["The answer is (A)."], ["Answer: B"], ["I pick \\boxed{\\text{(A)}}"]]]
    rep = fake_eval(monkeypatch, texts, ["(A)"], choices="ABCD")
    assert rep["rules"]["equality"] == "choice-letter" and rep["rules"]["extraction"].startswith("choice-letter")
    assert rep["cons_at_n"] == 1.0 and rep["pass1_per_token"]["<think3>"] == 0.0
    assert rep["distinct_answers_per_question"] == 2.0
    rep = fake_eval(monkeypatch, texts, ["B"], choices="ABCD")
    assert rep["cons_at_n"] == 0.0 and rep["pass_at_k"]["1"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="option letters"):
        fake_eval(monkeypatch, texts, ["42"], choices="ABCD")


# ---------------------------------------------------------------- generation backends, imports
def test_vllm_backend_is_one_streamed_call_and_missing_module_is_clear(monkeypatch):
    from trl_ssft.eval import sampling as S

    calls, got = [], []

    def fake_stream(model_dir, prompts, *, seeds, on_done, greedy, max_new_tokens, temperature, top_p, suppress_ids,
                    **opts):
        calls.append((model_dir, prompts, seeds, greedy, max_new_tokens, temperature, top_p, suppress_ids, opts))
        on_done([(1, [7, 7])])
        on_done([(0, [7])])

    monkeypatch.setitem(sys.modules, "trl_ssft.eval.vllm_backend", types.SimpleNamespace(stream_ids_vllm=fake_stream))
    S._generate(None, [[1, 2], [3]], [11, 12], got.extend, backend="vllm", model_dir="m", max_new_tokens=5,
                temperature=0.7, top_p=0.9, greedy=False, batch_size=8, suppress_ids=[9],
                vllm_options={"tensor_parallel_size": 2, "data_parallel_size": 4})
    assert got == [(1, [7, 7]), (0, [7])]
    assert calls == [("m", [[1, 2], [3]], [11, 12], False, 5, 0.7, 0.9, [9],
                      {"tensor_parallel_size": 2, "data_parallel_size": 4})]
    monkeypatch.setitem(sys.modules, "trl_ssft.eval.vllm_backend", None)
    with pytest.raises(ImportError, match="backend 'vllm'"):
        S._generate(None, [[1]], [0], got.extend, backend="vllm", model_dir="m", max_new_tokens=5, temperature=0.7,
                    top_p=0.9, greedy=False)
    with pytest.raises(ValueError, match="backend"):
        S._generate(None, [[1]], [0], got.extend, backend="tgi")


def test_evaluate_does_not_import_the_demo_family():
    code = ("import sys, trl_ssft.eval.evaluate, trl_ssft.eval.cli; "
            "bad = [m for m in sys.modules if m.startswith('trl_ssft.demo')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
