"""Kill a training run with SIGKILL, resume it from its last checkpoint, compare with an uninterrupted run.

The data has rows with more traces than forking tokens (N = 3, policy `subsample`), so "data order
restored" covers the per-step trace draw as well as the question order. The kill happens (a) in the
middle of a step and (b) while checkpoint-6 is being written, after its weights but before its optimizer
and trainer state: the half-written checkpoint must never be one that a resume picks up.
"""

import hashlib
import json
import os

import numpy as np
import pytest
from datasets import Dataset

from scripts.runner import read_records, run

TIMEOUT = 300
STEPS, SAVE = 8, 2


def _rows():
    from trl_ssft.demo.synthetic import make_rows

    rows = make_rows(10, seed=5)
    for k, row in enumerate(rows):  # M = 4 (> N = 3, subsampled each step), 3, 2, ...
        m = 4 - k % 3
        row["traces"], row["trace_sources"] = row["traces"][:m], row["trace_sources"][:m]
    return rows


def _args(model, data, out, record, *extra):
    return ["ssft_run.py", "--model", model, "--data", str(data), "--out", str(out), "--record", str(record),
            "--max-steps", str(STEPS), "--save-steps", str(SAVE), "--bs", "2", "--num-fork", "3",
            "--policy", "subsample", "--lr", "1e-2", *extra]


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory):
    base = tmp_path_factory.mktemp("ref")
    data = base / "rows.json"
    data.write_text(json.dumps(_rows()))
    proc = run(_args(tiny_models["tied"], data, base / "out", base / "rec"), TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "1 rows with more traces than forking tokens" not in proc.stdout
    assert "4 rows with more traces than forking tokens (subsampled each step)" in proc.stdout
    return {"data": data, "hist": json.load(open(base / "out" / "history.json")),
            "recs": read_records(str(base / "rec"), 1)}


def _by_step(recs):
    out = {}
    for r in recs:
        out.setdefault(r["step"], []).append((r["q"], r["traces"], r["assign"]))
    return out


def _losses(hist):
    return {h["step"]: h["loss"] for h in hist["log_history"] if "loss" in h}


def _tree_hash(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(p.encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


@pytest.mark.parametrize("where", ["step", "save"])
def test_kill_and_resume_matches_uninterrupted_run(tiny_models, reference, tmp_path, where):
    from transformers.trainer_utils import get_last_checkpoint

    out = tmp_path / "out"
    kill = ["--kill-in-step", "6"] if where == "step" else ["--kill-in-save", "6"]
    proc = run(_args(tiny_models["tied"], reference["data"], out, tmp_path / "killed", *kill), TIMEOUT)
    assert proc.returncode in (-9, 137), proc.stdout[-6000:]  # died by SIGKILL
    names = sorted(os.listdir(out))
    assert "checkpoint-4" in names and "checkpoint-6" not in names, names
    if where == "save":  # the interrupted save left its files only in the staging directory
        staging = out / ".ssft-incomplete-checkpoint-6" / "checkpoint-6"
        assert (staging / "model.safetensors").exists() and not (staging / "trainer_state.json").exists()
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-4")
    for ck in ("checkpoint-2", "checkpoint-4"):  # every published checkpoint is complete
        files = set(os.listdir(out / ck))
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "ssft_state.json",
                "rng_state.pth"} <= files, files
    ck4 = json.load(open(out / "checkpoint-4" / "ssft_state.json"))
    assert ck4["global_step"] == 4 and sum(ck4["match_counts"]) == sum(
        len(t) for s in range(4) for _, t, _ in _by_step(reference["recs"])[s])

    proc = run(_args(tiny_models["tied"], reference["data"], out, tmp_path / "resumed", "--resume"), TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert not any(n.startswith(".ssft-incomplete") for n in os.listdir(out))  # leftovers cleaned up
    hist = json.load(open(out / "history.json"))
    assert hist["global_step"] == STEPS
    # match counts restored from checkpoint-4 and continued: the same totals as the uninterrupted run
    assert hist["match_counts"] == reference["hist"]["match_counts"]
    assert json.load(open(out / "ssft_state.json"))["match_counts"] == reference["hist"]["match_counts"]
    # data order (questions, subsampled traces) and matching of steps 5..8 as in the uninterrupted run
    ref, res = _by_step(reference["recs"]), _by_step(read_records(str(tmp_path / "resumed"), 1))
    assert sorted(res) == [4, 5, 6, 7]
    for s in res:
        assert [(q, t) for q, t, _ in res[s]] == [(q, t) for q, t, _ in ref[s]], s
        assert [a for _, _, a in res[s]] == [a for _, _, a in ref[s]], s
    ref_loss, res_loss = _losses(reference["hist"]), _losses(hist)
    for s in range(5, STEPS + 1):
        assert res_loss[s] == pytest.approx(ref_loss[s], rel=1e-3, abs=1e-4), (s, res_loss, ref_loss)


def test_bad_data_leaves_earlier_checkpoints_intact(tiny_models, reference, tmp_path):
    """A run that stops on bad data (a resume of the reference run's directory) touches no checkpoint."""
    from conftest import cpu_args
    from trl_ssft import SSFTTrainer
    from trl_ssft.data import SSFTDataError

    out = os.path.join(os.path.dirname(reference["data"]), "out")
    assert {"checkpoint-6", "checkpoint-8"} <= set(os.listdir(out))
    before = _tree_hash(out)
    bad = _rows()
    bad[7]["traces"][1] = "   "
    args = cpu_args(tmp_path, output_dir=out, max_steps=STEPS, save_strategy="steps", save_steps=SAVE,
                    ssft_num_fork_tokens=3, ssft_max_traces_policy="subsample")
    with pytest.raises(SSFTDataError, match=r"train dataset, row 7, field 'traces\[1\]': is empty"):
        SSFTTrainer(model=tiny_models["tied"], args=args, train_dataset=Dataset.from_list(bad)).train(
            resume_from_checkpoint=True)
    assert _tree_hash(out) == before


def test_subsampling_redraws_per_step(reference):
    """The reference run really subsamples (so the resume comparison above covers the draw)."""
    seen = {}
    for r in reference["recs"]:
        seen.setdefault(r["q"], set()).add(tuple(r["traces"]))
    assert all(len(t) <= 3 for r in reference["recs"] for t in [r["traces"]])
    assert any(len(v) > 1 for v in seen.values()), "no question was seen with two different trace subsets"
