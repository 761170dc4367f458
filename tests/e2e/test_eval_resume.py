"""A long evaluation survives interruption: `trl-ssft eval MODEL --task aime25 --data-files ...` killed with SIGKILL
mid-run and rerun with `--resume` gives the same report and samples as one uninterrupted run (HF backend, CPU, a
tiny model saved with the released checkpoints' forking-token layout in its ssft_state.json)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from scripts.runner import env

NAMES = [f"<think{i}>" for i in range(1, 5)]
Q, ROUNDS = 6, 2
TOTAL = Q * len(NAMES) * ROUNDS


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from trl_ssft.demo.synthetic import corpus, make_rows
    from trl_ssft.demo.tiny import build_tiny_model, build_tiny_tokenizer
    from trl_ssft.state import write_ssft_state
    from trl_ssft.tokens import prepare_fork_tokens

    base = tmp_path_factory.mktemp("resume")
    rows = make_rows(Q, seed=3)
    tok = build_tiny_tokenizer(corpus(rows), vocab_size=400)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, seed=0)
    ids = prepare_fork_tokens(model, tok, NAMES, noise=1.0)
    model.save_pretrained(base / "model")
    tok.save_pretrained(base / "model")
    write_ssft_state(str(base / "model"), {"fork_tokens": NAMES, "fork_token_ids": ids, "pass1_token": NAMES[0],
                                           "assignment": "hungarian",
                                           "fork_layout": {"name": "released", "before": "<|im_start|>", "after": "\n"}})
    data = base / "aime25.jsonl"  # the hub dataset's own columns
    data.write_text("".join(json.dumps({"id": str(k), "problem": r["prompt"][0]["content"], "answer": r["answer"]}) + "\n"
                            for k, r in enumerate(rows)))
    return base


def _cmd(base, name, *extra):
    return [sys.executable, "-m", "trl_ssft.cli", "eval", str(base / "model"), "--task", "aime25", "--data-files",
            str(base / "aime25.jsonl"), "--rounds", str(ROUNDS), "--max-new-tokens", "24", "--batch-size", "4",
            "--temperature", "1.0", "--seed", "5", "--output", str(base / f"{name}.json"), "--no-plot", *extra]


def _lines(path) -> int:
    try:
        with open(path) as f:
            return f.read().count("\n")
    except FileNotFoundError:
        return 0


def _report(path) -> dict:
    rep = json.load(open(path))
    for k in ("seconds", "samples_file", "plot"):
        rep.pop(k, None)
    return rep


def test_sigkill_then_resume_equals_one_run(setup):
    base = setup
    one = subprocess.run(_cmd(base, "one"), env=env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-4000:]
    assert "settings that differ from the authors' evaluation" in one.stderr  # listed before generation
    assert "tok/s" in one.stderr and "sample/s" in one.stderr  # the progress bar
    samples = base / "two.samples.jsonl"
    proc = subprocess.Popen(_cmd(base, "two"), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while _lines(samples) < 1 + 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = _lines(samples) - 1
    assert proc.returncode == -signal.SIGKILL and 8 <= kept < TOTAL, (proc.returncode, kept)
    resumed = subprocess.run(_cmd(base, "two", "--resume"), env=env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "samples already there" in resumed.stderr
    a, b = _report(base / "one.json"), _report(base / "two.json")
    assert a == b
    assert a["fork_layout"]["name"] == "released" and a["samples_per_question"] == len(NAMES) * ROUNDS
    lines_a = open(base / "one.samples.jsonl").read().splitlines()
    lines_b = open(samples).read().splitlines()
    assert lines_a == lines_b and len(lines_a) == 1 + TOTAL
    assert len({json.loads(x)["text"] for x in lines_a[1:]}) > TOTAL // 2  # real samples, not one repeated text
