"""`GFPOTrainer`: TRL's `GRPOTrainer` with the GFPO overrides of `mixin.GFPOMixin`.

    from trl_ssft import GFPOConfig, GFPOTrainer, correctness_reward
    trainer = GFPOTrainer(model="ssft-model-dir", reward_funcs=correctness_reward, args=GFPOConfig(...),
                          train_dataset=ds)   # rows: {"prompt": [...messages], "answer": "42"}
    trainer.train()
"""

from __future__ import annotations

from trl import GRPOTrainer

from ..state import read_ssft_state
from .config import GFPOConfig
from .exploration import check_enumerate_group
from .fields import gfpo_settings
from .mixin import GFPOMixin, check_grpo_args, model_path_of
from .rewards import load_reward_funcs


class GFPOTrainer(GFPOMixin, GRPOTrainer):
    """Global Forking Policy Optimization: GRPO whose only trained token is the forking token.

    Arguments are `GRPOTrainer`'s, plus `fork_tokens` (names; default: `gfpo_fork_tokens`, the model's
    ssft_state.json, or the tokenizer's `<think1>`...) and `ssft_state_dir` (where the starting model's
    ssft_state.json is, when `model` is an instance loaded from elsewhere, e.g. an SSFT adapter). `reward_funcs=None` uses `gfpo_reward_funcs`, else the
    correctness reward. `args` may be a `GFPOConfig` or any `GRPOConfig` carrying `gfpo_*` attributes.
    """

    _tag_names = ["trl", "grpo", "gfpo", "ssft"]

    def __init__(self, model, reward_funcs=None, args: GFPOConfig | None = None, *posargs, fork_tokens=None,
                 ssft_state_dir: str | None = None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "m")
            args = GFPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-GFPO")
        settings = gfpo_settings(args)
        check_grpo_args(args, settings)  # before TRL connects to a vLLM server or builds anything
        names = fork_tokens or settings.gfpo_fork_tokens or (
            read_ssft_state(ssft_state_dir or model).get("fork_tokens") if isinstance(ssft_state_dir or model, str)
            else None)
        if names:  # N known before the model loads: the group-size rule of `enumerate` fails early
            check_enumerate_group(settings.gfpo_token_choice, args.num_generations, list(names))
        if reward_funcs is None:
            reward_funcs = load_reward_funcs(settings.gfpo_reward_funcs, settings)
        super().__init__(model, reward_funcs, args, *posargs, **kwargs)
        self.gfpo_setup(settings, fork_tokens=fork_tokens, model_path=ssft_state_dir or model_path_of(model))
