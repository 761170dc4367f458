"""trl_ssft: Set Supervised Fine-Tuning (SSFT) with global forking tokens, for TRL.

Public API::

    from trl_ssft import SSFTConfig, SSFTTrainer
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "SSFTConfig": ("trl_ssft.config", "SSFTConfig"),
    "SSFTTrainer": ("trl_ssft.trainer", "SSFTTrainer"),
    "SSFTLossMixin": ("trl_ssft.set_loss", "SSFTLossMixin"),
    "SSFTCollator": ("trl_ssft.collator", "SSFTCollator"),
    "SSFTDataError": ("trl_ssft.data", "SSFTDataError"),
    "columns_to_ssft": ("trl_ssft.traces.columns", "columns_to_ssft"),
    "build_traces": ("trl_ssft.traces.build", "build"),
    "fork_token_names": ("trl_ssft.config", "fork_token_names"),
    "load_ssft_model": ("trl_ssft.eval.inference", "load_ssft_model"),
    "fork_prompt_ids": ("trl_ssft.eval.inference", "fork_prompt_ids"),
    "fork_prompt_strings": ("trl_ssft.eval.inference", "fork_prompt_strings"),
    "generate": ("trl_ssft.eval.inference", "generate"),
    "extract_answer": ("trl_ssft.eval.answers", "extract_answer"),
    "majority_vote": ("trl_ssft.eval.metrics", "majority_vote"),
    "evaluate_model": ("trl_ssft.eval.evaluate", "evaluate_model"),
    "GFPOConfig": ("trl_ssft.gfpo.config", "GFPOConfig"),
    "GFPOTrainer": ("trl_ssft.gfpo.trainer", "GFPOTrainer"),
    "correctness_reward": ("trl_ssft.gfpo.rewards", "correctness_reward"),
}

__all__ = list(_LAZY)


def __getattr__(name):  # import-light: torch/trl load on first use
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'trl_ssft' has no attribute {name!r}")
