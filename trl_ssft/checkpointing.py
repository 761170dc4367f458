"""`AtomicCheckpointMixin`: a checkpoint directory appears only complete.

transformers writes a checkpoint file by file into ``<run_dir>/checkpoint-N`` (weights, then optimizer,
scheduler, RNG, trainer state): a run killed in between leaves a directory that `get_last_checkpoint`
would pick and a resume would fail on (or silently use a half state). With this mixin every process
writes into ``<run_dir>/.ssft-incomplete-checkpoint-N/checkpoint-N``; after all processes are done the
saving process renames it to ``<run_dir>/checkpoint-N`` (one atomic rename on the same filesystem) and
only then rotates old checkpoints (`save_total_limit`). Leftover staging directories of a killed save
are removed when training starts.
"""

from __future__ import annotations

import logging
import os
import shutil

from .distributed import barrier

logger = logging.getLogger(__name__)

#: Staging directory prefix of a checkpoint being written.
STAGING_PREFIX = ".ssft-incomplete-"


class AtomicCheckpointMixin:
    """Mix in before a `transformers.Trainer` subclass; active when the host sets `ssft_args`."""

    ssft_args = None
    _ssft_staging_root: str | None = None

    def _get_output_dir(self, trial):
        """The run directory, or the staging directory while a checkpoint is being written."""
        if self._ssft_staging_root is not None:
            return self._ssft_staging_root
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial, **kwargs):
        """Write ``checkpoint-N`` into a staging directory, then rename it into place (see the module docstring)."""
        if self.ssft_args is None:
            return super()._save_checkpoint(model, trial, **kwargs)
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        step = int(self.state.global_step)
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
        final = os.path.join(run_dir, name)
        staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
        staging = os.path.join(staging_root, name)
        local_main = getattr(self.args, "local_process_index", 0) == 0
        if local_main and os.path.isdir(staging_root):
            shutil.rmtree(staging_root, ignore_errors=True)  # left by a save that was killed
        barrier(self)
        self._ssft_staging_root = staging_root  # read by `_get_output_dir` while the parent saves
        try:
            result = super()._save_checkpoint(model, trial, **kwargs)
        finally:
            self._ssft_staging_root = None
        # the parent looked for the best checkpoint inside the staging directory: point it at run_dir
        best = getattr(self.state, "best_global_step", None)
        if best:
            best_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{best}")
            if best == step or os.path.isdir(best_dir):
                self.state.best_model_checkpoint = best_dir
        elif self.state.best_model_checkpoint and staging_root in str(self.state.best_model_checkpoint):
            self.state.best_model_checkpoint = str(self.state.best_model_checkpoint).replace(staging_root, run_dir)
        if self.args.should_save and os.path.isdir(staging):
            from transformers.trainer import TRAINER_STATE_NAME

            if os.path.exists(os.path.join(staging, TRAINER_STATE_NAME)):
                self.state.save_to_json(os.path.join(staging, TRAINER_STATE_NAME))
        barrier(self)  # every process has written its files (weights/optimizer shards, RNG state)
        if self.args.should_save:
            _publish(staging, final, staging_root)
        barrier(self)
        if local_main and not self.args.should_save and os.path.isdir(staging):
            _publish(staging, final, staging_root)  # a node without a shared filesystem
        if self.args.should_save:
            _rotate(self, run_dir)
        barrier(self)
        return result

    def _ssft_remove_incomplete_checkpoints(self) -> None:
        out = self.args.output_dir
        if not (self.args.should_save and out and os.path.isdir(out)):
            return
        for d in os.listdir(out):
            if d.startswith(STAGING_PREFIX) and os.path.isdir(os.path.join(out, d)):
                logger.warning("removing %s: an incomplete checkpoint left by an interrupted save", d)
                shutil.rmtree(os.path.join(out, d), ignore_errors=True)

    def train(self, *args, **kwargs):
        if self.ssft_args is not None:
            self._ssft_remove_incomplete_checkpoints()
        return super().train(*args, **kwargs)


def _publish(staging: str, final: str, staging_root: str) -> None:
    """Rename a finished checkpoint into place (replacing an older one of the same step) and tidy up."""
    if os.path.isdir(final):  # e.g. a rerun saving the same step: swap, never mix files of two saves
        old = os.path.join(staging_root, "replaced")
        os.rename(final, old)
    os.rename(staging, final)
    try:  # make the rename durable before anything relies on it
        fd = os.open(os.path.dirname(final) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    shutil.rmtree(staging_root, ignore_errors=True)


def _rotate(trainer, run_dir: str) -> None:
    """Delete old checkpoints beyond `save_total_limit` (the parent only saw the staging directory)."""
    try:
        from transformers.trainer_utils import rotate_checkpoints
    except ImportError:  # older transformers: a Trainer method
        trainer._rotate_checkpoints(use_mtime=True, output_dir=run_dir)
        return
    rotate_checkpoints(output_dir=run_dir, save_total_limit=trainer.args.save_total_limit,
                       best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)
