"""GFPO (Global Forking Policy Optimization, stage 2) in Axolotl: `rl: grpo` + `gfpo: true` + the SSFT plugin.

    base_model: outputs/ssft-model        # an SSFT model (its tokenizer has the forking tokens)
    plugins: [axolotl_ssft.SSFTPlugin]
    rl: grpo
    gfpo: true
    trl: {num_generations: 6, max_completion_length: 256}   # reward_funcs default: the correctness reward
    datasets: [{path: rl.jsonl, ds_type: json}]              # rows: prompt (messages) + answer

Axolotl 0.19 builds RL trainers without a plugin's `get_trainer_cls`; the plugin's `register(cfg)` sets
`trainer_cls: axolotl_ssft.gfpo.AxolotlGFPOTrainer`, which Axolotl swaps in after its GRPO branch has
built the arguments (model, `trl.reward_funcs`, `AxolotlGRPOConfig`). `post_trainer_create` then calls
`gfpo_setup_from_axolotl(cfg)`, which activates `trl_ssft.gfpo.mixin.GFPOMixin` with the `gfpo_*` keys.

GFPO here is never TRL's removed "Group Filtered Policy Optimization".
"""

from __future__ import annotations

from typing import Any

from axolotl.core.trainers.grpo.trainer import AxolotlGRPOTrainer

from trl_ssft.gfpo.fields import gfpo_settings
from trl_ssft.gfpo.mixin import GFPOMixin, model_path_of
from trl_ssft.gfpo.rewards import correctness_reward, make_correctness_reward

TRAINER_CLS = "axolotl_ssft.gfpo.AxolotlGFPOTrainer"
DEFAULT_REWARD = "trl_ssft.gfpo.rewards.correctness_reward"


class AxolotlGFPOTrainer(GFPOMixin, AxolotlGRPOTrainer):
    """Axolotl's GRPO trainer with the GFPO overrides; inactive until `gfpo_setup_from_axolotl(cfg)`.

    `reward_funcs` left out (Axolotl passes none when `trl.reward_funcs` is empty): the correctness reward.
    """

    _tag_names = ["trl", "grpo", "axolotl", "gfpo", "ssft"]

    def __init__(self, model, reward_funcs=None, *args: Any, **kwargs: Any):
        super().__init__(model, reward_funcs if reward_funcs is not None else [correctness_reward], *args, **kwargs)

    def gfpo_setup_from_axolotl(self, cfg) -> None:
        """Activate GFPO with the `gfpo_*` keys of an Axolotl cfg; the forking tokens come from `gfpo_fork_tokens`,
        the base model's ssft_state.json, or its tokenizer. The default correctness reward follows
        `gfpo_answer_column`, `gfpo_answer_extract` and `gfpo_math_verify`."""
        settings = gfpo_settings(cfg)
        custom = make_correctness_reward(settings.gfpo_answer_column, settings.gfpo_answer_extract,
                                         settings.gfpo_math_verify)
        self.reward_funcs = [custom if f is correctness_reward else f for f in self.reward_funcs]
        source = cfg.get("base_model_config") or cfg.get("base_model") or model_path_of(self.model)
        self.gfpo_setup(settings, model_path=source)


def register_gfpo(cfg: dict) -> None:
    """The plugin's `register` step for a GFPO config (raw YAML): trainer class, reward default, vLLM IS off."""
    if not cfg.get("trainer_cls"):  # a user's own subclass stays (post_trainer_create checks it)
        cfg["trainer_cls"] = TRAINER_CLS
    trl = dict(cfg.get("trl") or {})
    if not trl.get("reward_funcs"):
        trl["reward_funcs"] = list(cfg.get("gfpo_reward_funcs") or [DEFAULT_REWARD])
    if trl.get("use_vllm") and trl.get("vllm_importance_sampling_correction") is None:
        trl["vllm_importance_sampling_correction"] = False  # the trained token is not sampled by vLLM
    cfg["trl"] = trl


def gfpo_summary(trainer) -> str:
    """One line for the end of the run: token counts and mean rewards over training."""
    s = trainer.gfpo_state()
    parts = [f"{t}: {c}" + (f" (reward {r:.2f})" if r is not None else "")
             for t, c, r in zip(trainer.gfpo_fork_names, s["token_counts"], s["token_mean_reward"], strict=True)]
    return f"GFPO token counts over {s['global_step']} steps: " + ", ".join(parts) + "; Pass@1: the model's own token"
