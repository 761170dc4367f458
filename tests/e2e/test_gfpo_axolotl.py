"""GFPO (Global Forking Policy Optimization, stage 2) through the real `axolotl train` CLI, by config flags alone:
`rl: grpo` + `gfpo: true` + the SSFT plugin, on a tiny local model with forking tokens (transformers generation, CPU).
The config errors run Axolotl's real config loader in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from axolotl_helpers import CPU_SWITCHES, log_history, run_ok, ssft_state, write_jsonl, write_yaml

pytest.importorskip("axolotl")

NAMES = [f"<think{i}>" for i in range(1, 5)]


@pytest.fixture(scope="module")
def ssft_model(tmp_path_factory):
    """A tiny untied Llama whose tokenizer has 4 forking tokens, an ssft_state.json naming them, and 8 RL rows."""
    from trl_ssft.demo.synthetic import corpus, make_rows
    from trl_ssft.demo.tiny import build_tiny_model, build_tiny_tokenizer
    from trl_ssft.state import write_ssft_state
    from trl_ssft.tokens import prepare_fork_tokens

    base = tmp_path_factory.mktemp("gfpo_axolotl")
    rows = make_rows(8, seed=0)
    tok = build_tiny_tokenizer(corpus(rows))
    model = build_tiny_model(tok, arch="llama", tie_word_embeddings=False)
    ids = prepare_fork_tokens(model, tok, NAMES)
    model.save_pretrained(base / "model")
    tok.save_pretrained(base / "model")
    write_ssft_state(str(base / "model"), {"fork_tokens": NAMES, "fork_token_ids": ids, "pass1_token": NAMES[1]})
    data = write_jsonl(base / "rl.jsonl", [{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    return {"model": str(base / "model"), "data": data, "base": base}


def gfpo_recipe(model: str, data: str, out: Path, **overrides) -> dict:
    cfg = {
        "base_model": model,
        "plugins": ["axolotl_ssft.SSFTPlugin"],
        "rl": "grpo",
        "gfpo": True,
        "gfpo_token_choice": "sample",
        "trl": {"num_generations": 4, "max_completion_length": 8, "temperature": 1.0, "beta": 0.0},
        "datasets": [{"path": data, "ds_type": "json", "split": "train"}],
        "sequence_len": 128,
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
        "max_steps": 2,
        "learning_rate": 0.01,
        "lr_scheduler": "constant",
        "weight_decay": 0.0,
        "logging_steps": 1,
        "save_steps": 2,
        "seed": 0,
        "output_dir": str(out / "out"),
        "dataset_prepared_path": str(out / "prepared"),
        **CPU_SWITCHES,
    }
    cfg.update(overrides)
    return cfg


@pytest.mark.axolotl
def test_axolotl_train_runs_gfpo_by_config_flags(ssft_model, tmp_path):
    cfg = gfpo_recipe(ssft_model["model"], ssft_model["data"], tmp_path)
    log = run_ok(write_yaml(tmp_path / "gfpo.yaml", cfg), timeout=600)
    out = Path(cfg["output_dir"])
    state = ssft_state(out)
    assert state["pass1_choice"] == "self" and state["fork_tokens"] == NAMES and state["pass1_token"] == NAMES[1]
    g = state["gfpo"]
    assert g["method"] == "Global Forking Policy Optimization" and g["token_choice"] == "sample"
    assert g["suppress_fork_tokens"] is True  # the default reached Axolotl's GRPO generation config
    assert g["global_step"] == 2 and sum(g["token_counts"]) == 16  # 2 steps x 2 questions x 4 rollouts
    hist = [h for h in log_history(out / "checkpoint-2") if "loss" in h]
    assert [h["step"] for h in hist] == [1, 2]
    for key in ("gfpo/entropy", "gfpo/fork_mass", f"gfpo/prob/{NAMES[0]}", f"gfpo/usage/{NAMES[3]}"):
        assert key in hist[0], sorted(hist[0])
    assert "GFPO token counts over 2 steps" in log
    assert "rewards/correctness_reward/mean" in hist[0]  # the default reward, set by the plugin


TOY_REWARD = '''
def first_token_reward(prompts, completions, gfpo_fork_token, **kwargs):
    """1 for rollouts after <think1>, else 0: a reward that varies, so the policy must move."""
    return [1.0 if t == "<think1>" else 0.0 for t in gfpo_fork_token]
'''


@pytest.mark.axolotl
def test_axolotl_gfpo_learns_from_a_reward_that_varies(ssft_model, tmp_path):
    """A custom TRL reward by dotted path (`trl.reward_funcs`): it receives the forking token, and the
    rewarded token's probability rises over the steps of the real `axolotl train` run."""
    (tmp_path / "toy_reward_mod.py").write_text(TOY_REWARD)
    cfg = gfpo_recipe(ssft_model["model"], ssft_model["data"], tmp_path, gfpo_token_choice="enumerate", max_steps=4,
                      save_steps=4, learning_rate=0.01)
    cfg["trl"] = {**cfg["trl"], "reward_funcs": ["toy_reward_mod.first_token_reward"]}
    run_ok(write_yaml(tmp_path / "gfpo.yaml", cfg), timeout=600, env={"PYTHONPATH": str(tmp_path)})
    out = Path(cfg["output_dir"])
    g = ssft_state(out)["gfpo"]
    assert g["token_counts"] == [8, 8, 8, 8]  # enumerate: 4 steps x 2 questions x one rollout per token
    assert g["token_mean_reward"] == [1.0, 0.0, 0.0, 0.0]
    hist = [h for h in log_history(out / "checkpoint-4") if "loss" in h]
    assert all(h["rewards/first_token_reward/mean"] == 0.25 for h in hist)
    probs = [h[f"gfpo/prob/{NAMES[0]}"] for h in hist]  # measured at each step's rollouts, before its update
    assert probs[-1] > probs[0] + 0.05, probs


@pytest.mark.axolotl
@pytest.mark.parametrize("override,msg", [
    ({"trl": {"use_vllm": True, "vllm_mode": "server"}}, "vLLM server"),
    ({"trl": {"mask_truncated_completions": True}}, "mask_truncated_completions=False"),
    ({"rl": "dpo"}, "needs `rl: grpo`"),
    ({"gfpo_token_choise": "free"}, "did you mean `gfpo_token_choice`"),
])
def test_axolotl_gfpo_config_refusals(ssft_model, tmp_path, override, msg):
    """Refused in the schema validator, before any model is loaded."""
    from axolotl.cli.config import load_cfg

    cfg = gfpo_recipe(ssft_model["model"], ssft_model["data"], tmp_path)
    for k, v in override.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
    with pytest.raises(Exception, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_cfg(write_yaml(tmp_path / "bad.yaml", cfg))


def test_schema_mirrors_gfpo_fields():
    from dataclasses import fields

    from axolotl_ssft.args import GFPO_KEYS, SSFTArgs
    from trl_ssft.gfpo.fields import GFPOFields

    for f in fields(GFPOFields):
        info = SSFTArgs.model_fields[f.name]
        assert info.default == f.default and info.description == f.metadata["help"]
    assert SSFTArgs.model_fields["gfpo"].default is None and set(GFPO_KEYS) <= set(SSFTArgs.model_fields)
