"""`MatchMetricsMixin`: the matching statistics, buffered per micro-batch and logged with the Trainer's logs.

Logged keys (``eval_`` prefixed during evaluation): ``ssft/matched_cost``, ``ssft/unmatched_cost``,
``ssft/margin`` (means since the last log), ``ssft/nonfinite_costs``, ``ssft/nonfinite_matched``
(counts, summed), ``ssft/match_seconds`` (mean per micro-batch), ``ssft/usage_i`` (share of traces
matched to token i) and ``ssft/usage_entropy`` (normalised to [0, 1]). Everything is summed over
processes with one all-reduce per log.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from .distributed import all_reduce_sum

_METRIC_KEYS = ("matched_cost", "unmatched_cost", "margin", "nonfinite_costs", "nonfinite_matched", "match_seconds")
_SUMMED_KEYS = ("nonfinite_costs", "nonfinite_matched")  # counts: summed, not averaged


class MatchMetricsMixin:
    """Buffers `MatchStats` and token usage per split; adds them to every `Trainer.log` call."""

    ssft_args = None
    fork_token_ids: list[int] = []

    def _ssft_reset_metrics(self) -> None:
        self._ssft_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def ssft_record(self, split: str, stats: dict[str, list], counts: np.ndarray) -> None:
        """Buffer the statistics of one micro-batch (`SSFTLossMixin.ssft_assignments`) and its token counts [N]."""
        buf = self._ssft_metrics[split]
        for k, v in stats.items():
            buf[k].extend(v)
        buf["_usage"].append(counts)

    def ssft_metrics(self, split: str) -> dict[str, float]:
        """Mean of each statistic since the last log, summed over processes; clears the buffer."""
        buf = self._ssft_metrics[split]
        n = len(self.fork_token_ids)
        vec = []
        for k in _METRIC_KEYS:
            vec += [float(np.sum(buf.get(k, []))), float(len(buf.get(k, [])))]
        usage = np.sum(buf["_usage"], axis=0) if buf.get("_usage") else np.zeros(n)
        t = torch.tensor(vec + list(map(float, usage)), dtype=torch.float64)
        t = all_reduce_sum(t.to(self.args.device)).cpu()
        buf.clear()
        out = {}
        for i, k in enumerate(_METRIC_KEYS):
            s, c = float(t[2 * i]), float(t[2 * i + 1])
            if c > 0:
                out[f"ssft/{k}"] = s if k in _SUMMED_KEYS else s / c
        usage = t[2 * len(_METRIC_KEYS):].numpy()
        if usage.sum() > 0:
            frac = usage / usage.sum()
            for i, f in enumerate(frac):
                out[f"ssft/usage_{i + 1}"] = float(f)
            nz = frac[frac > 0]
            out["ssft/usage_entropy"] = float(-(nz * np.log(nz)).sum()) / math.log(n) if n > 1 else 0.0
        return out

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.ssft_args is not None:
            is_eval = any(k.startswith("eval_") for k in logs)
            extra = self.ssft_metrics("eval" if is_eval else "train")
            if is_eval:
                extra = {f"eval_{k}": v for k, v in extra.items()}
            logs = {**logs, **extra}
        return super().log(logs, *args, **kwargs)
