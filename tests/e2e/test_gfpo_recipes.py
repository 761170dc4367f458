"""The shipped tiny TRL GFPO recipe, as `trl-ssft gfpo --config` reads it, learns a per-question choice of forking token:
every GFPO / GRPO setting is the recipe's (enumerate, anchor 3, lr 1e-3, 12 rollouts per question, 4 questions per
step); only the model (a tiny one with 4 forking tokens), the data (two kinds of question), a reward that depends on
the token and the kind, the output dir and the number of steps are replaced. On the benchmark's task the same recipe
runs in `benchmarks/gfpo_recipes.py` (docs/gfpo_recipes.md)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
from test_gfpo import GOOD, NAMES, toy, token_reward  # noqa: E402, F401

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def good_mass(model_dir: str, rows: list[dict]) -> dict:
    """Mean N-way probability of each kind's rewarded token, over that kind's prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok.convert_tokens_to_ids(NAMES)
    out = {}
    with torch.no_grad():
        for kind, good in GOOD.items():
            ps = [torch.tensor([tok(r["prompt"])["input_ids"]]) for r in rows if r["kind"] == kind]
            probs = torch.stack([model(p).logits[0, -1, ids].softmax(-1) for p in ps]).mean(0)
            out[kind] = float(probs[NAMES.index(good)])
    return out


@pytest.mark.slow
def test_tiny_trl_recipe_learns_the_choice_per_kind(toy, tmp_path, capsys):  # noqa: F811
    from trl_ssft.gfpo.cli import main

    paths, data = toy
    ds = tmp_path / "rl.jsonl"
    ds.write_text("".join(json.dumps(r) + "\n" for r in data))
    out = tmp_path / "gfpo"
    before = good_mass(paths["untied"], data)
    argv = ["--config", os.path.join(REPO, "examples", "yaml", "trl_gfpo_tiny_cpu.yaml"),
            "--model_name_or_path", paths["untied"], "--dataset_name", str(ds), "--output_dir", str(out),
            "--gfpo_reward_funcs", "test_gfpo.token_reward", "--max_steps", "12"]
    assert main(argv) == 0
    assert "gfpo_token_choice=enumerate, num_generations=12" in capsys.readouterr().out
    after = good_mass(str(out), data)
    for kind in GOOD:
        assert after[kind] > before[kind] + 0.1, (kind, before, after)
    state = json.load(open(out / "ssft_state.json"))["gfpo"]
    assert state["anchor_coef"] == 3.0 and state["learning_rate"] == 1e-3 and sum(state["token_counts"]) == 12 * 48
