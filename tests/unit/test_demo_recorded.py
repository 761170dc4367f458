"""The demo's closing lines (trl_ssft.demo.recorded) and the robustness sweep's fidelity to scripts/demo.sh."""

import importlib.util
import io
import json
import os
from contextlib import redirect_stdout

import pytest

from trl_ssft.demo.recorded import main as recorded_main
from trl_ssft.demo.recorded import recorded_lines

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORT = os.path.join(REPO, "docs", "accuracy_claim_results.json")


def _metrics(p1, cons, modes, spread=0.0):
    v = lambda x: {"mean": x, "min": x - spread, "max": x + spread, "seeds": 3}  # noqa: E731
    return {"modes/question": v(modes), "token consistency": v(0.9), "Pass@1 best token": v(p1 + 0.05),
            "Pass@1 most-matched": v(p1), "Pass@1 mean": v(p1), "Cons@N": v(cons), "Pass@4": v(0.99)}


def test_one_line_per_method_labelled_recorded_with_its_command():
    report = {"command": "python benchmarks/mode_preservation.py --family teachers --seeds 0,1,2 --reuse",
              "args": {"num_tokens": 4, "seeds": "0,1,2"},
              "method_labels": {"hungarian": "SSFT (hungarian)", "none": "SFT-mixed (none)"},
              "across_seeds": {"T=0.7": {"hungarian": _metrics(0.781, 0.953, 3.9, 0.01),
                                         "none": _metrics(0.774, 0.861, 2.7)}}}
    lines = recorded_lines(report, "T=0.7", "docs/x.json")
    assert len(lines) == 3
    assert lines[0].startswith("Recorded, not recomputed") and report["command"] in lines[0]
    assert "docs/x.json" in lines[0] and "seeds 0,1,2" in lines[0]
    assert lines[1].startswith("  SSFT (hungarian): Pass@1 mean over tokens 78.1 % [77.1-79.1]")
    assert "Cons@4 95.3 % [94.3-96.3]" in lines[1] and "3.90 [3.89-3.91] modes/question" in lines[1]
    assert lines[2].startswith("  SFT-mixed (none): Pass@1 (its samples) 77.4 %,") and "best token" not in lines[2]
    with pytest.raises(ValueError, match="T=1.0"):
        recorded_lines(report, "T=1.0")


def test_the_committed_report_prints_and_demo_sh_prints_it():
    out = io.StringIO()
    with redirect_stdout(out):
        assert recorded_main([REPORT]) == 0
    text = out.getvalue()
    report = json.load(open(REPORT))
    assert text.startswith("Recorded, not recomputed") and report["command"] in text
    assert all(f"  {report['method_labels'][m]}:" in text for m in report["across_seeds"]["T=0.7"])
    demo = open(os.path.join(REPO, "scripts", "demo.sh")).read()
    assert "trl_ssft.demo.recorded docs/accuracy_claim_results.json" in demo


def _robustness():
    spec = importlib.util.spec_from_file_location("demo_robustness", os.path.join(REPO, "benchmarks", "demo_robustness.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_robustness_sweep_runs_the_demo_commands_and_recipe():
    import yaml

    R = _robustness()
    demo = open(os.path.join(REPO, "scripts", "demo.sh")).read()
    assert "trl_ssft.demo.assets \"$OUT/assets\" " + " ".join(R.ASSET_ARGS) in demo
    assert " ".join(R.EVAL_ARGS) in demo.replace("\\\n    ", "")
    a = R.parse_args(["--set", "num_epochs=1"])
    cfg = yaml.safe_load(R.recipe_text(a, "/A", "/O/model", 7))
    committed = yaml.safe_load(open(os.path.join(REPO, a.recipe)))
    assert cfg["seed"] == 7 and cfg["num_epochs"] == 1 and cfg["base_model"] == "/A/model"
    assert cfg["output_dir"] == "/O/model" and cfg["datasets"][0]["path"] == "/A/train.jsonl"
    assert {k: v for k, v in cfg.items() if k not in ("seed", "num_epochs", "base_model", "output_dir", "datasets",
                                                      "test_datasets", "dataset_prepared_path")} == \
        {k: v for k, v in committed.items() if k not in ("seed", "num_epochs", "base_model", "output_dir", "datasets",
                                                         "test_datasets", "dataset_prepared_path")}
    assert R.recipe_key(a) != R.recipe_key(R.parse_args([]))
    assert R.recipe_key(R.parse_args(["--seeds", "9"])) == R.recipe_key(R.parse_args([]))


def test_robustness_goal_check():
    R = _robustness()
    good = {"pass1_best_token": 0.9, "cons_at_n_with_tokens": 0.9, "distinct_modes_per_question": 3.9,
            "min_token_consistency": 0.9}
    assert R.goal_met(good)
    for k in good:
        assert not R.goal_met({**good, k: R.GOAL[k] - 1e-6}), k
    summary = {"token_consistency": {"<think1>": 1.0, "<think2>": 0.5}, "pass1_best_token": 0.9,
               "pass1_most_matched_token": 0.8, "pass1_mean_over_tokens": 0.85, "cons_at_n_with_tokens": 0.9,
               "distinct_modes_per_question": 4.0}
    assert R.figures(summary)["min_token_consistency"] == 0.5
