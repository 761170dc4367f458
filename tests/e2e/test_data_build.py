"""`trl-ssft data build` output trains as it is: JSONL, Parquet and a saved folder read by both front ends;
`trl-ssft train` and the real `axolotl train` CLI (tiny model, 2 steps) on a built s1K-1.1-layout set; the
Axolotl column keys (`ssft_final_columns`, `ssft_grade_columns`, `ssft_trace_template`) through Axolotl's
real config loader and dataset pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from axolotl_helpers import base_recipe, run_ok, subprocess_env, write_yaml

REPO = Path(__file__).resolve().parents[2]


def _s1k_rows(n: int) -> list[dict]:
    """Rows in simplescaling/s1K-1.1's columns; every third gemini trace graded "No"."""
    rows = []
    for i in range(n):
        a = i + 2
        rows.append({
            "solution": f"We add: {i} + 2 = {a}, so \\boxed{{{a}}}.", "question": f"add {i} 2",
            "cot_type": "math", "source_type": "synthetic", "metadata": "{}",
            "deepseek_thinking_trajectory": f"forward: {i} + 2 = {a} . check {a} - 2 = {i} .",
            "deepseek_attempt": f"answer \\boxed{{{a}}}", "deepseek_grade": "Yes", "deepseek_grade_reason": "",
            "gemini_thinking_trajectory": f"count up from {i} twice : {i + 1} , {a} .",
            "gemini_attempt": f"The final answer is \\boxed{{{a if i % 3 else a + 1}}}",
            "gemini_grade": "No" if i % 3 == 0 else "Yes", "gemini_grade_reason": "",
        })
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The s1K-layout source, a tiny model whose tokenizer knows it, and the build in all three formats."""
    from trl_ssft.demo.tiny import save_tiny_model
    from trl_ssft.traces.build import build

    work = tmp_path_factory.mktemp("data_build")
    rows = _s1k_rows(12)
    src = work / "s1k.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = [r[c] for r in rows for c in ("question", "deepseek_thinking_trajectory", "gemini_thinking_trajectory",
                                           "deepseek_attempt", "gemini_attempt")] + ["<think> </think>"]
    model = save_tiny_model(str(work / "model"), corpus, arch="qwen2")
    outs = {fmt: str(work / name) for fmt, name in (("jsonl", "s1k.ssft.jsonl"), ("parquet", "s1k.ssft.parquet"),
                                                    ("folder", "s1k_ssft"))}
    reports = {fmt: build([str(src)], out) for fmt, out in outs.items()}
    return {"work": work, "src": str(src), "model": model, "out": outs, "reports": reports, "rows": rows}


def test_build_counts_and_formats_read_by_both_front_ends(built):
    import importlib.util

    from transformers import AutoTokenizer

    from trl_ssft.cli import load_ssft_dataset
    from trl_ssft.data import validate_row

    rep = built["reports"]["jsonl"]
    assert rep["questions_out"] == 12 and rep["drops"] == {"graded_incorrect": 4}
    assert rep["traces_per_question"] == {"1": 4, "2": 8}
    tok = AutoTokenizer.from_pretrained(built["model"])
    for fmt, path in built["out"].items():
        rows = load_ssft_dataset(path)["train"]
        rows = list(rows) if isinstance(rows, list) else rows.to_list()
        assert len(rows) == 12, fmt
        for i, r in enumerate(rows):
            validate_row(r, i, num_fork_tokens=6)
            assert all(t.endswith(f"\\boxed{{{i + 2}}}") for t in r["traces"]), (fmt, r["traces"])
        if importlib.util.find_spec("axolotl") is None:  # the newest-end environment has no Axolotl
            continue
        from axolotl.utils.data.shared import load_dataset_with_config
        from axolotl.utils.dict import DictDefault

        from axolotl_ssft.ssft import SSFTDatasetStrategy

        ds = load_dataset_with_config(DictDefault({"path": path, "type": "ssft"}), use_auth_token=False)
        ds = ds["train"] if hasattr(ds, "keys") else ds
        wrapped = SSFTDatasetStrategy(tok, {}, {"path": path}).wrap_dataset(ds)
        assert [len(t) for t in wrapped["trace_ids"]] == [len(r["traces"]) for r in rows], fmt


def test_trl_ssft_train_on_built_folder(built, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "trl-ssft")
    cmd = [exe, "train", "--config", str(REPO / "examples/yaml/trl_tiny_cpu.yaml"),
           "--model_name_or_path", built["model"], "--dataset_name", built["out"]["folder"],
           "--output_dir", str(tmp_path / "o"), "--max_steps", "2", "--logging_steps", "1", "--save_steps", "10",
           "--ssft_match_tokens", "16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SSFT done: 2 steps" in proc.stdout
    state = json.load(open(tmp_path / "o" / "ssft_state.json"))
    assert 2 * 4 <= sum(state["match_counts"]) <= 2 * 4 * 2  # 2 steps x 4 questions x M in {1, 2}


@pytest.mark.axolotl
def test_axolotl_train_on_built_parquet(built, tmp_path):
    pytest.importorskip("axolotl")
    cfg = base_recipe(built["model"], built["out"]["parquet"], tmp_path, ssft_match_tokens=16)
    cfg["datasets"] = [{"path": built["out"]["parquet"], "type": "ssft"}]
    out = run_ok(write_yaml(tmp_path / "cfg.yaml", cfg), timeout=600)
    assert "SSFT match counts" in out
    state = json.load(open(tmp_path / "out" / "ssft_state.json"))
    assert state["global_step"] == 2


@pytest.mark.axolotl
def test_axolotl_column_keys_lay_out_and_filter(built, tmp_path):
    """The s1K-1.1 keys through Axolotl's real config loader + dataset pipeline: traces end with the
    attempts, "No"-graded ones dropped, a bad key combination refused at config time."""
    pytest.importorskip("axolotl")
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager
    from transformers import AutoTokenizer

    keys = dict(ssft_prompt_column="question",
                ssft_trace_columns=["deepseek_thinking_trajectory", "gemini_thinking_trajectory"],
                ssft_final_columns=["deepseek_attempt", "gemini_attempt"],
                ssft_grade_columns=["deepseek_grade", "gemini_grade"], ssft_trace_sources=["deepseek", "gemini"],
                ssft_answer_column="solution", ssft_answer_from="boxed", ssft_trace_template="s1")
    cfg = load_cfg(write_yaml(tmp_path / "cfg.yaml", base_recipe(built["model"], built["src"], tmp_path, **keys,
                                                                 shuffle_merged_datasets=False)))
    ds = PluginManager.get_instance().load_datasets(cfg, preprocess=False).train_dataset
    assert [len(t) for t in ds["trace_ids"]] == [1 if i % 3 == 0 else 2 for i in range(12)]
    tok = AutoTokenizer.from_pretrained(built["model"])
    first = tok.decode(ds["trace_ids"][1][1][:-1])  # question 1, gemini (graded Yes), end token cut off
    assert first.startswith("<|im_start|>think\ncount up from 1") and first.endswith("Answer: The final answer is "
                                                                                   "\\boxed{3}")
    bad = base_recipe(built["model"], built["src"], tmp_path, **{**keys, "ssft_final_columns": ["deepseek_attempt"]})
    with pytest.raises(Exception, match=r"final_columns needs one entry per trace column"):
        load_cfg(write_yaml(tmp_path / "bad.yaml", bad))
