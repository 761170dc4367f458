"""The demo's question family (trl_ssft.demo.digitsum), its mode classifier and the demo's progress filter."""

import io

import pytest

from trl_ssft.demo import digitsum as D
from trl_ssft.demo.progress import main as progress_main


def test_traces_are_correct_and_classified_as_their_mode():
    rows = D.make_rows(200, seed=1)
    assert len({r["prompt"][0]["content"] for r in rows}) == 200
    for r in rows:
        q = D.parse_question(r["prompt"][0]["content"])
        assert q is not None and str(sum(q)) == r["answer"]
        assert sorted(r["trace_sources"]) == sorted(D.MODES)
        for mode, trace in zip(r["trace_sources"], r["traces"]):
            assert trace.endswith(f"\\boxed{{{r['answer']}}}")
            for x, y in D.steps_for(mode, q):
                assert f"{x}+{y}={x + y}" in trace
            assert D.classify_mode(trace, q) == mode
        assert len(r["traces"][0]) < 80


def test_classifier_rejects_wrong_name_or_operands():
    q = (3, 8, 1, 6)
    assert D.classify_mode("forward: 3+8=11 . 11+1=12", q) == "forward"
    assert D.classify_mode("outer: 3+8=11 . 11+1=12", q) == "other"  # names outer, starts forward
    assert D.classify_mode("cross: 3+1=4", q) == "cross"
    assert D.classify_mode("pairs 3+8=11", q) == "other"
    assert D.classify_mode("", q) == "other"


def test_strategies_have_different_hard_questions():
    import numpy as np

    rows = D.make_rows(1000, seed=0)
    hard = np.array([[D.hard_steps(m, D.parse_question(r["prompt"][0]["content"])) > 0 for m in D.MODES]
                     for r in rows])
    assert hard.any(0).all()                      # every strategy has hard questions
    assert (~hard).sum(1).mean() > 2              # on most questions most strategies are easy
    for i in range(4):
        for j in range(i + 1, 4):                 # no two strategies are hard on the same questions
            assert (hard[:, i] != hard[:, j]).mean() > 0.15


def test_registered_classifier():
    from trl_ssft.eval.modes import pick_classifier

    rows = D.make_rows(3)
    classify, names = pick_classifier("digitsum", rows)
    assert names == list(D.MODES)
    assert classify(rows[0]["traces"][0], rows[0]) == rows[0]["trace_sources"][0]


@pytest.mark.parametrize("family,word", [("digitsum", "sum "), ("synthetic", "add ")])
def test_assets_family(tmp_path, family, word):
    from trl_ssft.demo.assets import build_demo_assets

    import json

    paths = build_demo_assets(str(tmp_path), num_train=8, num_eval=2, hidden_size=16, num_layers=1, family=family)
    row = json.loads(open(paths["train"]).readline())
    assert row["prompt"][0]["content"].startswith(word)


def test_progress_filter_prints_one_line_per_logging_step():
    log = ("Loading weights: 100%|##| 26/26 [00:00<00:00, 10.0it/s]\n"
           " 6%|#  | 64/1024 [00:18<05:23,  2.9it/s]\r"
           "{'loss': '2.844', 'ssft/margin': '0.001776', 'ssft/usage_entropy': '0.8084', 'epoch': '1'}\n"
           "100%|##| 8/8 [00:01<00:00,  6.0it/s]\n"
           "{'eval_loss': '0.5', 'eval_ssft/margin': '0.02'}\n"
           "{'debug': 1}\nSSFT match counts (hungarian): <think1>: 3\n")
    out = io.StringIO()
    progress_main(io.StringIO(log), out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step 64/1024 (6%)  loss 2.844") and "ETA 05:23" in lines[0]
    assert lines[1].startswith("step 64/1024 (6%)  eval loss 0.500")
    assert lines[2].startswith("SSFT match counts")
    assert len(lines) == 3
