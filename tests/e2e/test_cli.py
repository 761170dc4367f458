"""`trl-ssft train` from a YAML recipe, in a subprocess (the real console script)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env():
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_DISABLED="true")
    return env


def test_cli_trains_from_yaml(tmp_path):
    from trl_ssft.demo.assets import build_demo_assets

    assets = build_demo_assets(str(tmp_path / "assets"), num_train=24, num_eval=8)
    out = tmp_path / "run"
    exe = os.path.join(os.path.dirname(sys.executable), "trl-ssft")
    cmd = [exe, "train", "--config", os.path.join(REPO, "examples/yaml/trl_tiny_cpu.yaml"),
           "--model_name_or_path", assets["model"], "--dataset_name", assets["train"],
           "--output_dir", str(out), "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SSFT done: 4 steps" in proc.stdout
    state = json.load(open(out / "ssft_state.json"))
    assert sum(state["match_counts"]) == 4 * 4 * 4
    assert (out / "checkpoint-2" / "ssft_state.json").exists()
    assert "ssft/matched_cost" in proc.stdout + proc.stderr
    tok = json.load(open(out / "tokenizer.json"))
    assert {"<think1>", "<think6>"} <= {t["content"] for t in tok["added_tokens"]}


def _train_on(tmp_path, rows):
    """Run `trl-ssft train` on `rows` (written as JSONL) with the tiny recipe; returns the process."""
    from trl_ssft.demo.assets import build_demo_assets, write_jsonl

    assets = build_demo_assets(str(tmp_path / "assets"), num_train=8, num_eval=2)
    data = tmp_path / "rows.jsonl"
    write_jsonl(str(data), rows)
    exe = os.path.join(os.path.dirname(sys.executable), "trl-ssft")
    cmd = [exe, "train", "--config", os.path.join(REPO, "examples/yaml/trl_tiny_cpu.yaml"),
           "--model_name_or_path", assets["model"], "--dataset_name", str(data), "--output_dir", str(tmp_path / "o")]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)


def test_cli_reports_bad_data_with_row_and_field(tmp_path):
    from trl_ssft.demo.synthetic import make_rows

    rows = make_rows(5, seed=3)
    rows[3]["traces"] = ["ok", ""]
    proc = _train_on(tmp_path, rows)
    assert proc.returncode != 0
    assert "row 3, field 'traces[1]': is empty" in proc.stderr


@pytest.mark.parametrize("argv,code", [([], 2), (["--help"], 0), (["bogus"], 2)])
def test_cli_usage(argv, code):
    from trl_ssft.cli import main

    assert main(argv) == code


def test_cli_names_the_row_when_a_column_mixes_types(tmp_path):
    from trl_ssft.demo.synthetic import make_rows

    rows = make_rows(4, seed=5)
    rows[2]["traces"] = "a single string, not a list"
    proc = _train_on(tmp_path, rows)
    assert proc.returncode != 0
    assert "row 2, field 'traces'" in proc.stderr and "must be a list" in proc.stderr
