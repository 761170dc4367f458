"""`SSFTLossMixin`: the set loss, shared by the TRL trainer and the Axolotl trainer.

Per micro-batch of B questions (see `collator.py` for the batch layout):

1. scoring (no grad, `self.model`): for every question the N x M rows
   ``[prompt, fork_i, trace_j[:T]]`` -> cost [N, M] (only for ``hungarian``);
2. matching: cost -> token per trace (`matching.assign`);
3. set loss (grad, `model`): ONE forward over the sum_b M_b matched rows
   ``[prompt, fork_sigma(j), trace_j]`` with labels on the trace (and its end token), and on the
   forking token when `ssft_fork_token_loss`. The loss is sum of token NLL / number of loss tokens,
   where the count spans the whole gradient-accumulation window (and all processes when
   `average_tokens_across_devices`), as in SFT: GA=k gives the loss and gradients of a k-times
   larger batch.

The host trainer must set `self.ssft_args` (object with the `ssft_*` fields), `self.fork_token_ids`
and `self.ssft_pad_token_id` before training (see `setup_ssft`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import zlib
from collections import defaultdict

import numpy as np
import torch

from .compat import disable_bnb_cpu_inference_repack
from .matching import assign, sanitize_cost, second_best_total
from .scoring import score_continuations

logger = logging.getLogger(__name__)

STATE_FILE = "ssft_state.json"
IGNORE_INDEX = -100
#: A checkpoint is written under ``<run_dir>/.ssft-incomplete-checkpoint-N/checkpoint-N`` and renamed to
#: ``<run_dir>/checkpoint-N`` only once every process has finished writing it (see `_save_checkpoint`).
STAGING_PREFIX = ".ssft-incomplete-"


def _question_key(prompt: list[int]) -> int:
    return zlib.crc32(np.asarray(prompt, dtype=np.int64).tobytes())


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized() and \
            torch.distributed.get_world_size() > 1:
        dev = t.device
        if torch.distributed.get_backend() == "nccl" and dev.type == "cpu":
            t = t.cuda()
        elif torch.distributed.get_backend() == "gloo":
            t = t.cpu()
        torch.distributed.all_reduce(t)
        return t.to(dev)
    return t


class SSFTLossMixin:
    """Mix in before a `transformers.Trainer` subclass (`SFTTrainer`, `AxolotlTrainer`)."""

    ssft_args = None
    fork_token_ids: list[int] = []
    fork_token_names: list[str] = []
    ssft_pad_token_id: int = 0

    # ---------------------------------------------------------------- setup
    def setup_ssft(self, ssft_args, fork_token_ids: list[int], fork_token_names: list[str], pad_token_id: int):
        """Attach the SSFT settings; call after `Trainer.__init__`."""
        self.ssft_args = ssft_args
        self.fork_token_ids = list(fork_token_ids)
        self.fork_token_names = list(fork_token_names)
        self.ssft_pad_token_id = pad_token_id
        disable_bnb_cpu_inference_repack(self.model)
        self.ssft_match_counts = np.zeros(len(fork_token_ids), dtype=np.int64)
        self._ssft_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        # Our loss is already normalised by the token count of the whole GA window (see get_batch_samples).
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        self.can_return_loss = True

    def _ssft_seed(self) -> int:
        seed = self.ssft_args.ssft_seed
        return int(self.args.seed if seed is None else seed)

    # ---------------------------------------------------------------- GA normalisation
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches and "ssft_num_loss_tokens" in batches[0]:
            count = 0
            for b in batches:
                if self._ssft_needs_selection(b):  # M > N somewhere: count the traces this step trains on
                    prompts, traces = self._unpack(b)
                    count += self._ssft_loss_tokens(self.ssft_select_traces(prompts, traces))
                else:
                    count += int(b["ssft_num_loss_tokens"].sum())
            num_items = torch.tensor(count, dtype=torch.long, device=device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                num_items = _all_reduce_sum(num_items)
        return batches, num_items

    # ---------------------------------------------------------------- batch -> lists
    @staticmethod
    def _unpack(inputs) -> tuple[list[list[int]], list[list[list[int]]]]:
        p_ids = inputs["ssft_prompt_ids"].tolist()
        p_len = inputs["ssft_prompt_len"].tolist()
        t_ids = inputs["ssft_trace_ids"].tolist()
        t_len = inputs["ssft_trace_len"].tolist()
        prompts = [p[:n] for p, n in zip(p_ids, p_len)]
        traces = [[t[:n] for t, n in zip(ts, ns) if n > 0] for ts, ns in zip(t_ids, t_len)]
        return prompts, traces

    # ---------------------------------------------------------------- M > N: traces of this step
    def _ssft_step(self) -> int:
        return int(self.state.global_step) if getattr(self, "state", None) is not None else 0

    def _ssft_needs_selection(self, inputs) -> bool:
        if self.ssft_args is None or self.ssft_args.ssft_assignment == "none":
            return False
        return int((inputs["ssft_trace_len"] > 0).sum(-1).max()) > len(self.fork_token_ids)

    def ssft_select_traces(self, prompts, traces) -> list:
        """The traces trained this step: all of them, or N drawn for a question with M > N (``subsample``).

        The draw depends only on the seed, the global step and the question, so it is the same on every
        process, in the GA token count and in the loss, and after a resume from a checkpoint.
        """
        n = len(self.fork_token_ids)
        if self.ssft_args.ssft_assignment == "none" or all(len(ts) <= n for ts in traces):
            return traces
        if self.ssft_args.ssft_max_traces_policy != "subsample":
            m = max(len(ts) for ts in traces)
            raise ValueError(
                f"a question has {m} traces but there are only {n} forking tokens; "
                "set ssft_max_traces_policy: subsample or raise ssft_num_fork_tokens"
            )
        step, out = self._ssft_step(), []
        for p, ts in zip(prompts, traces):
            if len(ts) > n:
                rng = np.random.default_rng([self._ssft_seed(), step, _question_key(p), 1])
                ts = [ts[j] for j in np.sort(rng.choice(len(ts), n, replace=False))]
            out.append(ts)
        return out

    def _ssft_loss_tokens(self, traces) -> int:
        """Tokens that carry loss: trace tokens (+ one per trace for the forking token when it is trained)."""
        extra = 1 if (self.ssft_args.ssft_fork_token_loss and self.ssft_args.ssft_assignment != "none") else 0
        return sum(len(t) + extra for ts in traces for t in ts)

    # ---------------------------------------------------------------- step 1: cost matrices
    def ssft_cost_matrices(self, prompts, traces) -> list[np.ndarray]:
        """Cost [N, M_b] per question: mean NLL of trace_j[:T] after (prompt, fork_i), no gradient."""
        t_max = self.ssft_args.ssft_match_tokens
        prefixes, conts, where = [], [], []
        for b, (p, ts) in enumerate(zip(prompts, traces)):
            for i, fid in enumerate(self.fork_token_ids):
                for j, t in enumerate(ts):
                    prefixes.append(p + [fid])
                    conts.append(t if t_max is None else t[:t_max])
                    where.append((b, i, j))
        model = self.model  # unwrapped: no DDP hooks, no grad
        options = {}  # only non-defaults, so `scoring.scoring_options(...)` still applies otherwise
        mem_mb = getattr(self.ssft_args, "ssft_match_max_memory_mb", None)
        if mem_mb is not None:
            options["max_bytes"] = int(mem_mb) * 2**20
        if not getattr(self.ssft_args, "ssft_match_share_prompt", True):
            options["share_prefix"] = False
        flat = score_continuations(
            model, prefixes, conts, max_tokens=self.ssft_args.ssft_match_max_tokens,
            pad_token_id=self.ssft_pad_token_id, device=self.args.device, **options,
        ).numpy()
        costs = [np.zeros((len(self.fork_token_ids), len(ts))) for ts in traces]
        for (b, i, j), c in zip(where, flat):
            costs[b][i, j] = c
        return costs

    # ---------------------------------------------------------------- step 2: assignments
    def ssft_assignments(self, prompts, traces, mode: str) -> tuple[list, dict]:
        """Token index per trace for each question, and the matching statistics of this micro-batch."""
        n = len(self.fork_token_ids)
        stats = defaultdict(list)
        costs = None
        if mode == "hungarian":
            t0 = time.perf_counter()
            costs = self.ssft_cost_matrices(prompts, traces)
            stats["match_seconds"].append(time.perf_counter() - t0)
        out = []
        step = self._ssft_step()
        for b, (p, ts) in enumerate(zip(prompts, traces)):
            rng = np.random.default_rng([self._ssft_seed(), step, _question_key(p)])
            cost = None
            if costs is not None:
                cost, n_bad = sanitize_cost(costs[b])
                stats["nonfinite_costs"].append(n_bad)
            a = assign(cost, mode, n, len(ts), rng)
            out.append(a)
            if cost is not None and n_bad:
                bad_matched = int((~np.isfinite(np.asarray(costs[b], dtype=np.float64)))[a, np.arange(len(ts))].sum())
                stats["nonfinite_matched"].append(bad_matched)
                if bad_matched:
                    logger.warning(
                        "SSFT step %d: %d trace(s) have a non-finite matching cost under every free forking token; "
                        "they are trained with the token chosen by the rule 'non-finite = worse than any finite "
                        "cost' (check the model and data for inf/NaN)", step, bad_matched,
                    )
            if cost is not None:
                m = len(ts)
                matched = cost[a, np.arange(m)]
                stats["matched_cost"].extend(matched.tolist())
                mask = np.ones_like(cost, dtype=bool)
                mask[a, np.arange(m)] = False
                if mask.any():
                    stats["unmatched_cost"].extend(cost[mask].tolist())
                second = second_best_total(cost, a)
                if second is not None:
                    stats["margin"].append((second - float(matched.sum())) / m)
        return out, stats

    # ---------------------------------------------------------------- step 3: set loss
    def ssft_build_rows(self, prompts, traces, assignments) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded input_ids, attention_mask, labels [sum_b M_b, S] of the matched sequences."""
        fork_loss = self.ssft_args.ssft_fork_token_loss
        seqs, labs = [], []
        for p, ts, a in zip(prompts, traces, assignments):
            for j, t in enumerate(ts):
                if a is None:
                    seqs.append(p + t)
                    labs.append([IGNORE_INDEX] * len(p) + t)
                else:
                    fid = self.fork_token_ids[int(a[j])]
                    seqs.append(p + [fid] + t)
                    labs.append([IGNORE_INDEX] * len(p) + [fid if fork_loss else IGNORE_INDEX] + t)
        s = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), s), self.ssft_pad_token_id, dtype=torch.long)
        labels = torch.full((len(seqs), s), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(seqs), s), dtype=torch.long)
        for r, (x, y) in enumerate(zip(seqs, labs)):
            ids[r, : len(x)] = torch.tensor(x)
            labels[r, : len(y)] = torch.tensor(y)
            mask[r, : len(x)] = 1
        return ids, mask, labels

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "ssft_prompt_ids" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        split = "train" if model.training else "eval"
        mode = self.ssft_args.ssft_assignment
        prompts, traces = self._unpack(inputs)
        traces = self.ssft_select_traces(prompts, traces)
        assignments, stats = self.ssft_assignments(prompts, traces, mode)

        counts = np.zeros(len(self.fork_token_ids), dtype=np.int64)
        for a in assignments:
            if a is not None:
                np.add.at(counts, a, 1)
        if split == "train":
            global_counts = _all_reduce_sum(torch.from_numpy(counts.copy()))
            self.ssft_match_counts = self.ssft_match_counts + global_counts.numpy()
        buf = self._ssft_metrics[split]
        for k, v in stats.items():
            buf[k].extend(v)
        buf["_usage"].append(counts)

        ids, mask, labels = self.ssft_build_rows(prompts, traces, assignments)
        device = inputs["ssft_prompt_ids"].device
        local_tokens = self._ssft_loss_tokens(traces)
        denom = num_items_in_batch if num_items_in_batch is not None else local_tokens
        outputs = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device),
            num_items_in_batch=denom, use_cache=False,
        )
        loss = outputs.loss
        if (num_items_in_batch is not None and self.args.average_tokens_across_devices
                and self.args.world_size > 1):
            loss = loss * self.accelerator.num_processes  # DDP averages the gradients across ranks
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if "ssft_prompt_ids" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs, return_outputs=False)
        return loss.detach(), None, None

    # ---------------------------------------------------------------- logging
    _METRIC_KEYS = ("matched_cost", "unmatched_cost", "margin", "nonfinite_costs", "nonfinite_matched",
                    "match_seconds")
    _SUMMED_KEYS = ("nonfinite_costs", "nonfinite_matched")  # counts: summed, not averaged

    def ssft_metrics(self, split: str) -> dict[str, float]:
        """Mean of each statistic since the last log, summed over processes; clears the buffer."""
        buf = self._ssft_metrics[split]
        n = len(self.fork_token_ids)
        vec = []
        for k in self._METRIC_KEYS:
            vec += [float(np.sum(buf.get(k, []))), float(len(buf.get(k, [])))]
        usage = np.sum(buf["_usage"], axis=0) if buf.get("_usage") else np.zeros(n)
        t = torch.tensor(vec + list(map(float, usage)), dtype=torch.float64)
        t = _all_reduce_sum(t.to(self.args.device)).cpu()
        buf.clear()
        out = {}
        for i, k in enumerate(self._METRIC_KEYS):
            s, c = float(t[2 * i]), float(t[2 * i + 1])
            if c > 0:
                out[f"ssft/{k}"] = s if k in self._SUMMED_KEYS else s / c
        usage = t[2 * len(self._METRIC_KEYS):].numpy()
        if usage.sum() > 0:
            frac = usage / usage.sum()
            for i, f in enumerate(frac):
                out[f"ssft/usage_{i + 1}"] = float(f)
            nz = frac[frac > 0]
            ent = float(-(nz * np.log(nz)).sum())
            out["ssft/usage_entropy"] = ent / math.log(n) if n > 1 else 0.0
        return out

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.ssft_args is not None:
            is_eval = any(k.startswith("eval_") for k in logs)
            extra = self.ssft_metrics("eval" if is_eval else "train")
            if is_eval:
                extra = {f"eval_{k}": v for k, v in extra.items()}
            logs = {**logs, **extra}
        return super().log(logs, *args, **kwargs)

    # ---------------------------------------------------------------- match counts: save / resume
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
        os.makedirs(output_dir, exist_ok=True)
        tmp = os.path.join(output_dir, STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.ssft_state(), f, indent=2)
        os.replace(tmp, os.path.join(output_dir, STATE_FILE))

    def ssft_load_state(self, checkpoint_dir: str) -> None:
        path = os.path.join(checkpoint_dir, STATE_FILE)
        if not os.path.exists(path):
            logger.warning("no %s in %s: SSFT match counts restart from zero", STATE_FILE, checkpoint_dir)
            return
        with open(path) as f:
            state = json.load(f)
        if state.get("fork_tokens") != self.fork_token_names:
            raise ValueError(
                f"checkpoint {checkpoint_dir} was trained with forking tokens {state.get('fork_tokens')}, "
                f"this run uses {self.fork_token_names}"
            )
        self.ssft_match_counts = np.asarray(state["match_counts"], dtype=np.int64)

    # ---------------------------------------------------------------- atomic checkpoints
    def _ssft_barrier(self) -> None:
        acc = getattr(self, "accelerator", None)
        if acc is not None and acc.num_processes > 1:
            acc.wait_for_everyone()

    def _save_checkpoint(self, model, trial, **kwargs):
        """Write ``checkpoint-N`` so that it appears only complete.

        transformers writes a checkpoint file by file into ``<run_dir>/checkpoint-N`` (weights, then
        optimizer, scheduler, RNG, trainer state): a run killed in between leaves a directory that
        `get_last_checkpoint` would pick and a resume would fail on (or silently use a half state).
        Here every process writes into ``<run_dir>/.ssft-incomplete-checkpoint-N/checkpoint-N``; after
        all processes are done, the saving process renames it to ``<run_dir>/checkpoint-N`` (one atomic
        rename on the same filesystem) and only then rotates old checkpoints (`save_total_limit`).
        """
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
        self._ssft_barrier()
        self._get_output_dir = lambda trial=None: staging_root  # noqa: E731  (read by every _save_checkpoint)
        try:
            result = super()._save_checkpoint(model, trial, **kwargs)
        finally:
            del self._get_output_dir
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
        self._ssft_barrier()  # every process has written its files (weights/optimizer shards, RNG state)
        if self.args.should_save:
            _publish(staging, final, staging_root)
        self._ssft_barrier()
        if local_main and not self.args.should_save and os.path.isdir(staging):
            _publish(staging, final, staging_root)  # a node without a shared filesystem
        if self.args.should_save:
            _rotate(self, run_dir)
        self._ssft_barrier()
        return result

    def _ssft_remove_incomplete_checkpoints(self) -> None:
        out = self.args.output_dir
        if not (self.args.should_save and out and os.path.isdir(out)):
            return
        for d in os.listdir(out):
            if d.startswith(STAGING_PREFIX) and os.path.isdir(os.path.join(out, d)):
                logger.warning("removing %s: an incomplete checkpoint left by an interrupted save", d)
                shutil.rmtree(os.path.join(out, d), ignore_errors=True)

    # ---------------------------------------------------------------- configurations that cannot work
    def ssft_check_parallelism(self) -> None:
        """Refuse parallel layouts that break "one question per row" (raise `ValueError`).

        Data parallelism (DDP, FSDP, DeepSpeed ZeRO-1/2/3) and tensor parallelism work: the matching pass
        makes the same number of forward calls on every process. Context / sequence parallelism split one
        row across processes, so a scoring row and its cost are no longer whole on any process.
        """
        for pc in (getattr(getattr(self, "accelerator", None), "parallelism_config", None),
                   getattr(self.args, "parallelism_config", None)):
            if pc is None:
                continue
            for attr in ("cp_size", "sp_size"):
                size = getattr(pc, attr, None)
                if size is not None and size > 1:
                    raise ValueError(
                        f"SSFT does not support context/sequence parallelism ({attr}={size}): every process must "
                        "hold whole questions (prompt + all traces) to score and match them. Use data parallelism "
                        "(DDP/FSDP/ZeRO) with a smaller ssft_match_max_tokens instead."
                    )

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if self.ssft_args is not None:
            self.ssft_check_parallelism()
            self._ssft_remove_incomplete_checkpoints()
        if resume_from_checkpoint is not None and resume_from_checkpoint is not False and self.ssft_args:
            path = resume_from_checkpoint
            if isinstance(path, bool):
                from transformers.trainer_utils import get_last_checkpoint

                path = get_last_checkpoint(self.args.output_dir)
            if path:
                self.ssft_load_state(path)
        return super().train(resume_from_checkpoint, *args, **kwargs)


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
