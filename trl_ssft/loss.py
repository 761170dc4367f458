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
            count = sum(int(b["ssft_num_loss_tokens"].sum()) for b in batches)
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
        flat = score_continuations(
            model, prefixes, conts, max_tokens=self.ssft_args.ssft_match_max_tokens,
            pad_token_id=self.ssft_pad_token_id, device=self.args.device,
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
        step = int(self.state.global_step) if getattr(self, "state", None) is not None else 0
        for b, (p, ts) in enumerate(zip(prompts, traces)):
            rng = np.random.default_rng([self._ssft_seed(), step, _question_key(p)])
            cost = None
            if costs is not None:
                cost, n_bad = sanitize_cost(costs[b])
                stats["nonfinite_costs"].append(n_bad)
            a = assign(cost, mode, n, len(ts), rng)
            out.append(a)
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
        local_tokens = int(inputs["ssft_num_loss_tokens"].sum())
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
    _METRIC_KEYS = ("matched_cost", "unmatched_cost", "margin", "nonfinite_costs", "match_seconds")

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
                out[f"ssft/{k}"] = s / c if k != "nonfinite_costs" else s
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

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is not None and resume_from_checkpoint is not False and self.ssft_args:
            path = resume_from_checkpoint
            if isinstance(path, bool):
                from transformers.trainer_utils import get_last_checkpoint

                path = get_last_checkpoint(self.args.output_dir)
            if path:
                self.ssft_load_state(path)
        return super().train(resume_from_checkpoint, *args, **kwargs)
