"""The bundled synthetic family: every trace is correct and classified as its own mode."""

import re

from trl_ssft.demo.synthetic import MODES, classify_mode, make_rows, parse_question, trace_for


def test_traces_are_correct_and_recognised():
    rows = make_rows(30, seed=1)
    for r in rows:
        q = parse_question(r["prompt"][0]["content"])
        assert sorted(r["trace_sources"]) == sorted(MODES)
        for text, mode in zip(r["traces"], r["trace_sources"]):
            assert classify_mode(text, q) == mode
            assert re.search(r"\\boxed\{(\d+)\}", text).group(1) == r["answer"] == str(sum(q))
    assert len({tuple(r["trace_sources"]) for r in rows}) > 5  # trace order is shuffled


def test_mismatched_or_unknown_openings_are_other():
    q = (23, 45, 17)
    assert classify_mode(trace_for("forward", *q).replace("forward", "backward"), q) == "other"
    assert classify_mode("forward: 17 + 45 = 62", q) == "other"
    assert classify_mode("columns: tens 20 + 40", q) == "other"
    assert classify_mode("23 + 45 = 68", q) == "other"
    assert classify_mode("", q) == "other"
