"""axolotl_ssft: Set Supervised Fine-Tuning (SSFT) with global forking tokens as an Axolotl plugin.

Enable it in an Axolotl YAML::

    plugins:
      - axolotl_ssft.SSFTPlugin
    datasets:
      - path: data/train.jsonl
        type: ssft
    ssft_num_fork_tokens: 6

Import-light: `SSFTPlugin` (and with it Axolotl, torch and the trl_ssft core) loads on first access.
"""

from __future__ import annotations

__all__ = ["SSFTPlugin", "SSFTArgs"]

_LAZY = {"SSFTPlugin": ("axolotl_ssft.plugin", "SSFTPlugin"), "SSFTArgs": ("axolotl_ssft.args", "SSFTArgs")}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'axolotl_ssft' has no attribute {name!r}")
