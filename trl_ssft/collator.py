"""`SSFTCollator`: a micro-batch of questions, kept as prompts and trace lists (no forking token yet).

Output (B questions, M_max traces, lengths padded with `pad_token_id`):

- ``ssft_prompt_ids`` [B, P_max], ``ssft_prompt_len`` [B]
- ``ssft_trace_ids`` [B, M_max, L_max], ``ssft_trace_len`` [B, M_max] (0 = no trace in that slot)
- ``ssft_num_loss_tokens`` [B]: tokens that carry loss for each question (trace tokens, plus the forking-token
  span per trace, `layout.fork_loss_tokens`, when `fork_token_loss` and a token is used). The trainer sums these
  over the gradient-accumulation window to normalise the loss exactly like SFT does.

Rows with more traces than forking tokens (M > N) are passed whole under policy ``subsample``: the
trainer draws the N traces of each step (`SSFTLossMixin.ssft_select_traces`) from the seed, the global
step and the question, so the draw is the same on every process, with dataloader workers, and after a
resume (a collator-side RNG would be restarted by both). `ssft_num_loss_tokens` counts every trace
passed; the trainer recounts a micro-batch whose questions were subsampled. Under policy ``error``
such a row raises here (`trl_ssft.checks.check_max_traces`; the data finaliser already refuses it, naming
the row, before training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_max_traces
from .layout import LayoutIds, fork_loss_tokens


@dataclass
class SSFTCollator:
    pad_token_id: int
    num_fork_tokens: int
    assignment: str = "hungarian"
    fork_token_loss: bool = False
    max_traces_policy: str = "error"
    layout: LayoutIds | None = None  # the tokenized forking-token layout (None: the token alone)

    def _check_m(self, traces: list[list[int]]) -> list[list[int]]:
        """All traces pass (the trainer draws N per step under ``subsample``); M > N fails under ``error``."""
        check_max_traces(len(traces), self.num_fork_tokens, self.max_traces_policy, self.assignment)
        return traces

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        prompts = [list(f["prompt_ids"]) for f in features]
        traces = [self._check_m([list(t) for t in f["trace_ids"]]) for f in features]
        b = len(features)
        p_max = max(len(p) for p in prompts)
        m_max = max(len(t) for t in traces)
        l_max = max(len(x) for t in traces for x in t)
        prompt_ids = torch.full((b, p_max), self.pad_token_id, dtype=torch.long)
        trace_ids = torch.full((b, m_max, l_max), self.pad_token_id, dtype=torch.long)
        trace_len = torch.zeros((b, m_max), dtype=torch.long)
        loss_tokens = torch.zeros(b, dtype=torch.long)
        per_trace_extra = fork_loss_tokens(self.layout, self.fork_token_loss) if self.assignment != "none" else 0
        for i, (p, ts) in enumerate(zip(prompts, traces)):
            prompt_ids[i, : len(p)] = torch.tensor(p)
            for j, t in enumerate(ts):
                trace_ids[i, j, : len(t)] = torch.tensor(t)
                trace_len[i, j] = len(t)
                loss_tokens[i] += len(t) + per_trace_extra
        return {
            "ssft_prompt_ids": prompt_ids,
            "ssft_prompt_len": torch.tensor([len(p) for p in prompts], dtype=torch.long),
            "ssft_trace_ids": trace_ids,
            "ssft_trace_len": trace_len,
            "ssft_num_loss_tokens": loss_tokens,
        }
