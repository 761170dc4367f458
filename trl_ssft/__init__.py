"""trl_ssft: Set Supervised Fine-Tuning (SSFT) with global forking tokens, for TRL.

Public API::

    from trl_ssft import SSFTConfig, SSFTTrainer
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "SSFTConfig": ("trl_ssft.config", "SSFTConfig"),
    "SSFTTrainer": ("trl_ssft.trainer", "SSFTTrainer"),
    "SSFTLossMixin": ("trl_ssft.loss", "SSFTLossMixin"),
    "SSFTCollator": ("trl_ssft.collator", "SSFTCollator"),
    "SSFTDataError": ("trl_ssft.data", "SSFTDataError"),
    "columns_to_ssft": ("trl_ssft.data", "columns_to_ssft"),
    "fork_token_names": ("trl_ssft.config", "fork_token_names"),
    "load_ssft_model": ("trl_ssft.inference", "load_ssft_model"),
    "fork_prompt_ids": ("trl_ssft.inference", "fork_prompt_ids"),
    "fork_prompt_strings": ("trl_ssft.inference", "fork_prompt_strings"),
    "generate": ("trl_ssft.inference", "generate"),
    "extract_answer": ("trl_ssft.inference", "extract_answer"),
    "majority_vote": ("trl_ssft.metrics", "majority_vote"),
    "evaluate_model": ("trl_ssft.eval_cli", "evaluate_model"),
}

__all__ = list(_LAZY)


def __getattr__(name):  # import-light: torch/trl load on first use
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'trl_ssft' has no attribute {name!r}")
