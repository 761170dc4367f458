"""`ssft_state.json`: what training learned about the forking tokens, next to every checkpoint and model.

Written by the trainers (`SSFTStateMixin.write_ssft_state`, atomically) and read by resume and by
inference (`read_ssft_state`). Keys: ``fork_tokens`` (names), ``fork_token_ids``, ``match_counts``
(traces matched to each token over training, summed over processes), ``pass1_token`` (the token with
the most matches: the paper's Pass@1 heuristic), ``assignment``, ``fork_token_loss``,
``match_tokens`` (T), ``global_step``, ``fork_layout`` (the text around the forking token, `layout.ForkLayout.describe`;
evaluation and GFPO read it, a missing key means ``bare``).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

STATE_FILE = "ssft_state.json"


def read_ssft_state(path: str) -> dict:
    """The `ssft_state.json` of a model or checkpoint dir ({} when absent)."""
    f = os.path.join(path, STATE_FILE)
    if not os.path.exists(f):
        return {}
    with open(f) as fh:
        return json.load(fh)


def write_ssft_state(path: str, state: dict) -> None:
    """Write `state` as `path/ssft_state.json` atomically (a temporary file, then a rename)."""
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(path, STATE_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, os.path.join(path, STATE_FILE))


def resume_dir(resume_from_checkpoint, output_dir: str) -> str | None:
    """The checkpoint dir a `Trainer.train(resume_from_checkpoint=...)` call resumes from, or None.

    A path is returned as is; True means the last ``checkpoint-*`` in `output_dir` (None when there is none).
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if isinstance(resume_from_checkpoint, bool):
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(output_dir)
    return resume_from_checkpoint


class SSFTStateMixin:
    """Match counts of a trainer: counted during training, saved with every checkpoint, restored on resume.

    The host sets `fork_token_ids`, `fork_token_names`, `ssft_args`, `ssft_layout` (`layout.LayoutIds`) and
    `ssft_match_counts` (int64 [N]).
    """

    def ssft_state(self) -> dict:
        counts = [int(c) for c in self.ssft_match_counts]
        best = int(np.argmax(counts)) if sum(counts) else 0
        return {
            "fork_tokens": self.fork_token_names,
            "fork_token_ids": self.fork_token_ids,
            "match_counts": counts,
            "pass1_token": self.fork_token_names[best] if self.fork_token_names else None,
            "assignment": self.ssft_args.ssft_assignment,
            "fork_token_loss": bool(self.ssft_args.ssft_fork_token_loss),
            "match_tokens": self.ssft_args.ssft_match_tokens,
            "global_step": int(self.state.global_step),
            "fork_layout": self.ssft_layout.layout.describe(),
        }

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.ssft_args is not None and self.args.should_save:
            self.write_ssft_state(output_dir)

    def write_ssft_state(self, output_dir: str) -> None:
        """Write `ssft_state.json` (match counts, Pass@1 token) into `output_dir`, atomically.

        `save_model` calls it; a host that saves the model another way (Axolotl's final
        `save_pretrained`) calls it itself.
        """
        write_ssft_state(output_dir, self.ssft_state())

    def ssft_load_state(self, checkpoint_dir: str) -> None:
        """Restore the match counts of `checkpoint_dir` (a warning when it has no state file)."""
        state = read_ssft_state(checkpoint_dir)
        if not state:
            logger.warning("no %s in %s: SSFT match counts restart from zero", STATE_FILE, checkpoint_dir)
            return
        if state.get("fork_tokens") != self.fork_token_names:
            raise ValueError(
                f"checkpoint {checkpoint_dir} was trained with forking tokens {state.get('fork_tokens')}, "
                f"this run uses {self.fork_token_names}"
            )
        from .layout import layout_from_state

        if layout_from_state(state).describe() != self.ssft_layout.layout.describe():
            raise ValueError(f"checkpoint {checkpoint_dir} was trained with fork layout "
                             f"{layout_from_state(state).describe()}, this run uses {self.ssft_layout.layout.describe()}")
        self.ssft_match_counts = np.asarray(state["match_counts"], dtype=np.int64)
