"""Per-sequence mean next-token loss of many continuations, without gradient and in bounded memory.

This is the matching pass: for R rows ``prefix_r + cont_r`` it returns
``cost_r = mean_t -log p(cont_r[t] | prefix_r, cont_r[:t])`` (the prefix's own tokens, including the
forking token that ends it, are not scored).

Memory: rows are sorted by length and packed into chunks of at most `max_tokens` padded tokens.
Rows are left-padded so that the scored tokens sit at the end of each row, and the model is asked
for the last `k` positions' logits only (`logits_to_keep`): the prompt's logits are never built.
Positions are passed explicitly, so a left-padded row is scored exactly like the unpadded sequence.
The model runs in eval mode (no dropout). Under several processes the number of forward calls is
made equal on every rank (extra calls on a 2-token dummy row), as FSDP / ZeRO-3 require.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def plan_chunks(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group row indices, sorted by length, into chunks with rows x max_len <= max_tokens (>= 1 row each)."""
    order = sorted(range(len(lengths)), key=lambda r: lengths[r])
    chunks: list[list[int]] = []
    cur: list[int] = []
    for r in order:
        longest = max([lengths[r]] + [lengths[x] for x in cur])
        if cur and (len(cur) + 1) * longest > max_tokens:
            chunks.append(cur)
            cur = []
        cur.append(r)
    if cur:
        chunks.append(cur)
    return chunks


def _sync_num_calls(n: int, device) -> int:
    """The largest `n` over all processes (the local `n` when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return n
    if torch.distributed.get_world_size() == 1:
        return n
    backend = torch.distributed.get_backend()
    dev = device if backend == "nccl" else torch.device("cpu")
    t = torch.tensor([n], dtype=torch.long, device=dev)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def _forward_last_logits(model, input_ids, attention_mask, position_ids, keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions, [rows, keep, vocab]."""
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=False, logits_to_keep=keep)
    except TypeError:  # a model without logits_to_keep
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    logits = out.logits
    return logits[:, -keep:, :]


@torch.no_grad()
def score_continuations(
    model,
    prefixes: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    max_tokens: int,
    pad_token_id: int,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Mean NLL of each continuation given its prefix: float64 tensor [R] on CPU.

    prefixes[r]: token ids (>= 1), continuations[r]: token ids (>= 1) scored after it.
    """
    if len(prefixes) != len(continuations):
        raise ValueError("prefixes and continuations differ in length")
    device = device or next(model.parameters()).device
    lengths = [len(p) + len(c) for p, c in zip(prefixes, continuations)]
    chunks = plan_chunks(lengths, max_tokens)
    n_calls = _sync_num_calls(len(chunks), device)
    costs = torch.empty(len(prefixes), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        for chunk in chunks:
            s = max(lengths[r] for r in chunk)
            k = max(len(continuations[r]) for r in chunk)
            ids = torch.full((len(chunk), s), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), s), dtype=torch.long)
            for row, r in enumerate(chunk):
                seq = list(prefixes[r]) + list(continuations[r])
                ids[row, s - len(seq):] = torch.tensor(seq)
                mask[row, s - len(seq):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = _forward_last_logits(model, ids.to(device), mask.to(device), pos.to(device), k + 1)
            # logits[:, t] predicts token at position s - k - 1 + t + 1
            for row, r in enumerate(chunk):
                c = len(continuations[r])
                pred = logits[row, k - c: k].float()  # predictions of the last c tokens
                target = torch.tensor(continuations[r], dtype=torch.long, device=pred.device)
                costs[r] = F.cross_entropy(pred, target, reduction="mean").double().cpu()
            del logits
        for _ in range(n_calls - len(chunks)):  # keep collective forwards aligned across ranks
            ids = torch.full((1, 2), pad_token_id, dtype=torch.long, device=device)
            _forward_last_logits(model, ids, torch.ones_like(ids), torch.arange(2, device=device)[None], 1)
    finally:
        model.train(was_training)
    return costs
