"""GFPO's defaults and recipes follow the benchmark (enumerate + continuation anchor 3), `enumerate`'s group-size
rule fails early and clearly, and a run whose starting model is too peaked for `sample` says so at its start."""

from __future__ import annotations

import logging
import os

import pytest
import torch
import yaml
from test_gfpo import NAMES, fake_generation, group_inputs, make_trainer, toy  # noqa: F401

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
RECIPES = ("trl_gfpo_tiny_cpu.yaml", "trl_gfpo_qlora_24gb.yaml", "axolotl_gfpo_tiny_cpu.yaml")
# the SSFT recipe whose model each GFPO recipe continues (its N sets the group size)
SSFT_RECIPE = {"trl_gfpo_tiny_cpu.yaml": "trl_tiny_cpu.yaml", "trl_gfpo_qlora_24gb.yaml": "trl_qlora_24gb.yaml",
               "axolotl_gfpo_tiny_cpu.yaml": "axolotl_tiny_cpu.yaml"}


def test_defaults_are_the_benchmarks_configuration():
    from trl_ssft.gfpo.fields import GFPOFields

    d = GFPOFields()
    assert d.gfpo_token_choice == "enumerate" and d.gfpo_anchor_coef == 3.0 and d.gfpo_trainable == "all"


@pytest.mark.parametrize("name", RECIPES)
def test_every_gfpo_recipe_uses_the_benchmarked_settings_and_cites_its_row(name):
    """Each recipe: enumerate, anchor 3, a group of 2 rollouts per forking token (N of the SSFT recipe whose model
    it continues), and a comment naming the benchmark row it relies on (docs/gfpo_benchmark.md)."""
    path = os.path.join(REPO, "examples", "yaml", name)
    text = open(path).read()
    cfg = yaml.safe_load(text)
    grpo = cfg.get("trl", cfg)
    assert cfg["gfpo_token_choice"] == "enumerate" and cfg["gfpo_anchor_coef"] == 3.0
    n = yaml.safe_load(open(os.path.join(REPO, "examples", "yaml", SSFT_RECIPE[name])))["ssft_num_fork_tokens"]
    assert grpo["num_generations"] == 2 * n and grpo["beta"] == 0.0
    assert "docs/gfpo_benchmark.md" in text and "anchor 3" in text
    assert "gfpo_token_choice: sample, gfpo_anchor_coef: 0" in text  # the paper's description stays reachable


def test_tiny_trl_recipe_builds_its_config():
    """The TRL tiny recipe parses into a GFPOConfig as `trl-ssft gfpo` reads it (TRL's batch arithmetic included)."""
    from trl import ModelConfig, ScriptArguments, TrlParser

    from trl_ssft.gfpo.config import GFPOConfig

    parser = TrlParser((ScriptArguments, GFPOConfig, ModelConfig))
    _, args, _ = parser.parse_args_and_config(["--config", os.path.join(REPO, "examples/yaml/trl_gfpo_tiny_cpu.yaml"),
                                               "--output_dir", "/tmp/unused-gfpo-out"])
    assert args.gfpo_token_choice == "enumerate" and args.gfpo_anchor_coef == 3.0 and args.learning_rate == 1e-3
    assert args.per_device_train_batch_size % args.num_generations == 0


def test_enumerate_group_rule():
    from trl_ssft.gfpo.exploration import check_enumerate_group

    six = [f"<think{i}>" for i in range(1, 7)]
    with pytest.raises(ValueError, match=r"N = 6 forking tokens.*num_generations must be >= 6, got 4.*"
                                         r"TRL's default is 8.*gfpo_token_choice='sample'"):
        check_enumerate_group("enumerate", 4, six)
    assert check_enumerate_group("enumerate", 12, six) is None and check_enumerate_group("sample", 2, six) is None
    notice = check_enumerate_group("enumerate", 8, six)  # TRL's default group with N = 6
    assert "<think1>, <think2> get 2 rollouts per question, the others 1" in notice


def test_enumerate_group_rule_fails_before_the_model_loads(tmp_path):
    """With the forking tokens known (argument, gfpo_fork_tokens or the model dir's ssft_state.json) the rule runs
    before TRL loads anything: a path with no model behind it still gets the GFPO error, not a loading error."""
    from trl_ssft import GFPOConfig, GFPOTrainer
    from trl_ssft.state import write_ssft_state

    args = GFPOConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, num_generations=2,
                      per_device_train_batch_size=2, report_to=[])
    with pytest.raises(ValueError, match="num_generations must be >= 4"):
        GFPOTrainer(model=str(tmp_path / "no-model-here"), args=args, fork_tokens=NAMES)
    write_ssft_state(str(tmp_path / "state-only"), {"fork_tokens": NAMES})
    with pytest.raises(ValueError, match="num_generations must be >= 4"):
        GFPOTrainer(model=str(tmp_path / "state-only"), args=args)


def test_uneven_group_is_announced(toy, tmp_path, caplog):  # noqa: F811
    with caplog.at_level(logging.WARNING, logger="trl_ssft.gfpo"):
        make_trainer(toy, tmp_path, gfpo_token_choice="enumerate", num_generations=6, per_device_train_batch_size=12)
    assert "num_generations 6 is not a multiple of N = 4" in caplog.text


def boost_first_token(trainer, amount: float = 30.0):
    first = trainer.gfpo_fork_ids[0]

    def hook(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., first] += amount
        return logits

    return trainer.model.get_output_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize("choice,boost,warned", [("sample", True, True), ("enumerate", True, False),
                                                 ("sample", False, False)])
def test_peaked_start_is_announced_for_sample(toy, tmp_path, caplog, choice, boost, warned):  # noqa: F811
    """`sample` from a model whose N-way choice is peaked (one token > 0.95 on most prompts of the first batch) gets
    one clear line naming the fixes; `enumerate`, or a model that mixes its tokens, gets none."""
    trainer = make_trainer(toy, tmp_path, gfpo_token_choice=choice, num_generations=4)
    if boost:
        boost_first_token(trainer)
    fake_generation(trainer, lambda p, k: [5, 6])
    trainer.model.train()
    with caplog.at_level(logging.WARNING, logger="trl_ssft.gfpo"):
        trainer._generate_and_score_completions(group_inputs(toy[1]))
        trainer._generate_and_score_completions(group_inputs(toy[1]))
    lines = [r.getMessage() for r in caplog.records if "cannot explore" in r.getMessage()]
    if not warned:
        assert not lines
        return
    assert len(lines) == 1, lines  # once, at the start
    assert "on 100% of the first batch's prompts" in lines[0] and NAMES[0] in lines[0]
    assert "gfpo_token_choice='enumerate'" in lines[0] and "gfpo_token_temperature" in lines[0]


def test_peaked_share():
    from trl_ssft.gfpo.exploration import peaked_message, peaked_share

    logp = torch.log(torch.tensor([[0.97, 0.01, 0.01, 0.01], [0.25, 0.25, 0.25, 0.25], [0.01, 0.98, 0.005, 0.005]]))
    assert peaked_share(logp) == pytest.approx(2 / 3)
    assert peaked_message(logp, NAMES, 1.0) is not None
    assert peaked_message(logp, NAMES, 3.0) is None  # a hotter draw mixes the tokens: no warning


def test_the_run_says_what_it_does_at_start(toy, tmp_path, capsys):  # noqa: F811
    make_trainer(toy, tmp_path, gfpo_token_choice="enumerate", gfpo_anchor_coef=3.0)
    out = capsys.readouterr().out
    assert "GFPO: 4 forking tokens, gfpo_token_choice=enumerate, num_generations=4, gfpo_trainable=all" in out
    assert "anchor 3 against a frozen copy of the starting model" in out
