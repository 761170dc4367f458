"""The `gfpo` block of ssft_state.json: what a GFPO run writes next to its model and reads back on resume.

`GFPOStateMixin` is a base of `GFPOMixin`; it reads the trainer's per-token rollout counts and reward sums
(``gfpo_counts``, ``gfpo_reward_sums``, ``gfpo_no_fork``, set up by `GFPOMixin.gfpo_setup`) and its settings.
"""

from __future__ import annotations

import logging

import numpy as np

from ..state import read_ssft_state, write_ssft_state

logger = logging.getLogger(__name__)


class GFPOStateMixin:
    """`gfpo_state` / `write_gfpo_state` / `gfpo_load_state` of a GFPO trainer."""

    def gfpo_state(self) -> dict:
        """The `gfpo` block of ssft_state.json: settings, per-token usage and mean reward over training."""
        counts = [int(c) for c in self.gfpo_counts]
        means = [float(s / c) if c else None for s, c in zip(self.gfpo_reward_sums, counts, strict=True)]
        a = self.gfpo_args
        return {
            "method": "Global Forking Policy Optimization",
            "token_choice": a.gfpo_token_choice, "trainable": a.gfpo_trainable,
            "fork_mass_coef": a.gfpo_fork_mass_coef, "num_generations": int(self.num_generations),
            "suppress_fork_tokens": bool(self.gfpo_suppressing), "anchor_coef": a.gfpo_anchor_coef,
            "beta": float(getattr(self.args, "beta", 0.0)), "loss_type": getattr(self.args, "loss_type", None),
            "learning_rate": float(self.args.learning_rate), "global_step": int(self.state.global_step),
            "token_counts": counts, "token_mean_reward": means, "no_fork_rollouts": int(self.gfpo_no_fork),
            "token_reward_sums": [float(x) for x in self.gfpo_reward_sums],
        }

    def write_gfpo_state(self, output_dir: str) -> None:
        """Write ssft_state.json into `output_dir`: the SSFT state of the starting model plus the `gfpo` block;
        `pass1_choice: "self"` says that after GFPO the Pass@1 token is the model's own choice."""
        base = read_ssft_state(output_dir) or (read_ssft_state(self._gfpo_source)
                                               if isinstance(self._gfpo_source, str) else {})
        state = dict(base)
        state.setdefault("fork_tokens", self.gfpo_fork_names)
        state.setdefault("fork_token_ids", self.gfpo_fork_ids)
        state["fork_layout"] = self.gfpo_layout.layout.describe()  # evaluation uses the rollouts' layout
        state["pass1_choice"] = "self"
        state["gfpo"] = self.gfpo_state()
        write_ssft_state(output_dir, state)

    def gfpo_load_state(self, checkpoint_dir: str) -> None:
        """Restore the per-token rollout counts and reward sums of `checkpoint_dir` (a warning when absent)."""
        block = read_ssft_state(checkpoint_dir).get("gfpo")
        if not block:
            logger.warning("no gfpo block in %s/ssft_state.json: GFPO token counts restart from zero", checkpoint_dir)
            return
        counts = np.asarray(block["token_counts"], dtype=np.int64)
        if len(counts) != len(self.gfpo_fork_ids):
            raise ValueError(f"checkpoint {checkpoint_dir} has GFPO counts for {len(counts)} forking tokens, "
                             f"this run uses {len(self.gfpo_fork_ids)}")
        self.gfpo_counts = counts
        self.gfpo_reward_sums = np.asarray(block.get("token_reward_sums") or
                                           [(m or 0.0) * c for m, c in zip(block["token_mean_reward"], counts)],
                                           dtype=np.float64)
        self.gfpo_no_fork = int(block.get("no_fork_rollouts", 0))
