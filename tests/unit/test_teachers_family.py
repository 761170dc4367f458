"""The accuracy-claim family (trl_ssft.demo.teachers): valid rows, and each teacher wrong exactly on its own
fifth of the questions, as designed in docs/accuracy_claim.md."""

import numpy as np

from trl_ssft.demo import digitsum as D
from trl_ssft.demo import teachers as T


def _digits(row):
    return T.parse_question(row["prompt"][0]["content"])


def test_rows_are_valid_ssft_rows_with_the_correct_answer():
    from trl_ssft.checks import validate_row

    rows = T.make_rows(300, seed=3)
    for i, r in enumerate(rows):
        validate_row(r, i, num_fork_tokens=4, fork_names=["<think1>", "<think2>", "<think3>", "<think4>"])
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in D.make_rows(300, seed=3)]  # digitsum's questions
    for r in rows:
        q = _digits(r)
        assert r["answer"] == str(sum(q)) and sorted(r["trace_sources"]) == sorted(T.MODES)
        for mode, trace in zip(r["trace_sources"], r["traces"]):
            assert T.classify_mode(trace, q) == mode          # the slip is in the last step, the opening is the mode's
            steps = T.steps_for(mode, q)
            for x, y in steps[:-1]:
                assert f"{x}+{y}={x + y} ." in trace          # earlier steps are right
            x, y = steps[-1]
            assert trace.endswith(f"{x}+{y}={T.teacher_answer(mode, q)} . answer \\boxed{{{T.teacher_answer(mode, q)}}}")


def test_each_teacher_is_wrong_on_its_own_recognisable_fifth():
    rows = T.make_rows(3000, seed=0)
    wrong = np.array([[not dict(zip(r["trace_sources"], r["traces"]))[m].endswith(f"{{{r['answer']}}}") for m in T.MODES]
                      for r in rows])
    last = np.array([sum(_digits(r)) % 10 for r in rows])
    for j, m in enumerate(T.MODES):
        assert (wrong[:, j] == np.isin(last, T.SLIP_DIGITS[m])).all()   # wrong exactly where its digits say
        assert 0.15 < wrong[:, j].mean() < 0.25                          # about a fifth of the questions
    assert wrong.sum(1).max() == 1                                       # never two teachers wrong on one question
    assert 0.15 < (wrong.sum(1) == 0).mean() < 0.25                      # totals ending in 0 or 9: all right
    slipped = [T.teacher_answer(m, _digits(r)) for r in rows for m in T.MODES if T.slips(m, _digits(r))]
    assert all(a % 10 in (2, 3, 4, 5, 6, 7, 8, 9) for a in slipped)      # one too high, never a carry


def test_registered_classifier_and_assets():
    from trl_ssft.demo.assets import family_module
    from trl_ssft.eval.modes import pick_classifier

    rows = T.make_rows(4)
    classify, names = pick_classifier("teachers", rows)
    assert names == list(T.MODES) and family_module("teachers") is T
    assert all(classify(t, r) == s for r in rows for t, s in zip(r["traces"], r["trace_sources"]))


def test_error_anatomy_splits_slips_from_own_errors():
    rows = T.make_rows(40, seed=5)
    q = [_digits(r) for r in rows]
    i = next(k for k, d in enumerate(q) if T.slips("pairs", d))
    samples = [{"question": i, "mode": "pairs", "answer": str(sum(q[i]) + 1)},   # pairs' own slip
               {"question": i, "mode": "pairs", "answer": str(sum(q[i]))},       # right: the slip not reproduced
               {"question": i, "mode": "forward", "answer": str(sum(q[i]) + 1)},  # forward does not slip here
               {"question": i, "mode": "other", "answer": None}]
    a = T.error_anatomy(samples, rows)
    assert (a["right"], a["slip"], a["own error"]) == (0.25, 0.25, 0.5)
    assert a["slip_reproduced"] == 0.5 and a["samples"] == 4
