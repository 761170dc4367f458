"""Global Forking Policy Optimization (GFPO, stage 2 of arXiv 2510.05132 v3) for TRL.

Not TRL's removed "Group Filtered Policy Optimization". Import-light: `GFPOConfig` / `GFPOTrainer` load trl.
"""

from __future__ import annotations

from .fields import GFPO_FIELD_NAMES, GFPOFields, validate_gfpo_fields  # noqa: F401

_LAZY = {
    "GFPOConfig": ("trl_ssft.gfpo.config", "GFPOConfig"),
    "GFPOTrainer": ("trl_ssft.gfpo.trainer", "GFPOTrainer"),
    "GFPOMixin": ("trl_ssft.gfpo.mixin", "GFPOMixin"),
    "correctness_reward": ("trl_ssft.gfpo.rewards", "correctness_reward"),
    "make_correctness_reward": ("trl_ssft.gfpo.rewards", "make_correctness_reward"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'trl_ssft.gfpo' has no attribute {name!r}")
