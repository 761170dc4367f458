"""The matching pass: mean next-token loss of many continuations, without gradient, in bounded memory.

`score_continuations`: for R rows ``prefix_r + cont_r``, ``cost_r = mean_t -log p(cont_r[t] | prefix_r,
cont_r[:t])`` (the prefix's own tokens, including the forking token and its layout text, are not scored).
`cost_matrices`: SSFT's cost C[i, j] per question, from the N x M rows ``[prompt, span_i, trace_j[:T]]`` where
``span_i = before + fork_i + after`` (`layout.fork_span`; the bare layout is the token alone).

Every optimisation is exact (same numbers up to float rounding), on by default, and can be turned off
through `ScoringOptions` (passed explicitly; no module state):

- **shared prompt** (``share_prefix``): rows whose prefixes agree on their first ``shared_lens[r]`` tokens (default:
  all but the last; in SSFT the N x M rows of one question share ``prompt + before``, the layout's text before
  the token) get that context computed once: one forward over the distinct contexts returns their key/value
  cache; each row then runs only ``[fork_i, after, trace_j[:-1]]`` on top of its question's cache (left-padded to
  the chunk's longest context, masked, positions continued); only trace tokens are scored.
  Used when every layer is plain full attention (`supports_prefix_cache`) and a context is shared.
- **no wasted positions**: the last continuation token is never fed, and only the scored positions reach
  the output layer (``logits_to_keep``; ``keep_only_scored``).
- **bounded logits** (``logits_chunk_tokens``, ``nll_chunk_bytes``): the output module is intercepted
  inside the model's forward (`output_head.OutputHead`) and the scored positions' logits are built in
  slices, so at most ``logits_chunk_tokens`` positions' logits (and at most ``nll_chunk_bytes`` of fp32
  logits) exist at once, whatever the chunk size. ``keep_only_scored=False`` takes the model's own full
  logits instead (the unoptimised reference; only the fp32 upcast is sliced, by ``nll_chunk_bytes``).
- **length sorting** (``sort_rows``): rows are sorted by length before chunking, so a chunk pads little.
- **bounded chunks**: a forward call holds at most ``max_tokens`` padded tokens and, with ``max_bytes``,
  at most that many bytes by a model-aware estimate (`estimate_bytes`).
- **eval mode** (no dropout) during scoring; the model's mode is restored afterwards.
- **padded, not packed**, also under ``ssft_padding_free``: packing the rows would lose the shared prompt
  (transformers finds packed segments only without a key/value cache), which saves far more than the little
  padding that length-sorted chunks of ``[fork_i, trace_j[:T]]`` rows leave (`packed_rows.py`,
  docs/packing.md).

Under several processes the number of forward calls is made equal on every rank (extra calls on a
2-token dummy row, through the same output-module call), as FSDP / ZeRO-3 require.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .distributed import max_over_ranks
from .layout import LayoutIds, fork_span
from .scoring_plan import (_fits, _Plan, estimate_bytes, plan_chunks, plan_chunks_2d, plan_rows,  # noqa: F401
                           slice_tokens, supports_prefix_cache)  # (_fits: re-exported for tests)

__all__ = ["ScoringOptions", "ScoringStats", "cost_matrices", "estimate_bytes", "plan_chunks", "plan_chunks_2d",
           "plan_rows", "score_continuations", "slice_tokens", "supports_prefix_cache"]

IGNORE_INDEX = -100


@dataclass(frozen=True)
class ScoringOptions:
    """How the matching pass runs. Every setting gives the same costs (up to float rounding)."""

    share_prefix: bool | None = None  # None: when supported and a context is shared; True: require; False: off
    sort_rows: bool = True
    keep_only_scored: bool = True  # False: the model's full logits at every position (the naive reference)
    max_bytes: int | None = None  # per forward call, by `estimate_bytes`
    nll_chunk_bytes: int | None = 256 * 2**20  # fp32 logits (upcast + log-softmax) that exist at once
    eval_mode: bool = True
    logits_chunk_tokens: int = 1024  # positions whose logits exist at once

    def __post_init__(self):
        if self.logits_chunk_tokens < 1:
            raise ValueError(f"logits_chunk_tokens must be >= 1, got {self.logits_chunk_tokens!r}")

    @classmethod
    def from_fields(cls, args: Any) -> ScoringOptions:
        """From an object with the trainer's ``ssft_*`` fields (missing fields keep the defaults)."""
        mem_mb = getattr(args, "ssft_match_max_memory_mb", None)
        chunk = getattr(args, "ssft_logits_chunk_tokens", None)
        return cls(share_prefix=None if getattr(args, "ssft_match_share_prompt", True) else False,
                   max_bytes=None if mem_mb is None else int(mem_mb) * 2**20,
                   logits_chunk_tokens=cls.logits_chunk_tokens if chunk is None else int(chunk))


@dataclass
class ScoringStats:
    """Counters of one scoring pass (summed over its forward calls)."""

    forward_calls: int = 0
    tokens: int = 0  # real tokens fed
    padded_tokens: int = 0  # tokens fed, padding included
    logit_positions: int = 0  # positions whose hidden state reached the output layer
    max_logit_positions: int = 0  # the most positions whose logits existed at once
    shared_prefix: bool = False

    def add_call(self, tokens: int, padded: int, positions: int, at_once: int) -> None:
        self.forward_calls += 1
        self.tokens += tokens
        self.padded_tokens += padded
        self.logit_positions += positions
        self.max_logit_positions = max(self.max_logit_positions, at_once)


# --------------------------------------------------------------------------- forward + nll
def _forward(model, keep: int | None, **kw):
    if keep is not None:
        try:
            return model(**kw, logits_to_keep=keep)
        except TypeError:  # a model without logits_to_keep
            pass
    return model(**kw)


def _forward_without_logits(model, head, **kw):
    """A forward whose logits are not needed: intercepted (no projection at all) or one position kept."""
    if head is None:
        return _forward(model, 1, **kw)
    with head.intercept(lambda hidden: None):
        return _forward(model, 1, **kw)


def _logits_nll_sums(logits: torch.Tensor, targets: torch.Tensor, max_bytes: int | None) -> torch.Tensor:
    """Sum over positions of -log p(target) per row, float64 [rows]; targets == -100 are skipped.

    logits [rows, k, V] (any dtype), targets [rows, k]. The float32 upcast is done on slices of at most
    `max_bytes` (rows first, then positions). Used only with ``keep_only_scored=False``.
    """
    rows, k, vocab = logits.shape
    out = torch.zeros(rows, dtype=torch.float64, device=logits.device)
    step = k if max_bytes is None else max(1, int(max_bytes // (vocab * 4 * 2)))  # fp32 copy + log-softmax
    if step >= k:  # whole rows per slice
        rstep = rows if max_bytes is None else max(1, step // k)
        for r0 in range(0, rows, rstep):
            x, y = logits[r0: r0 + rstep].float().reshape(-1, vocab), targets[r0: r0 + rstep].reshape(-1)
            nll = F.cross_entropy(x, y, ignore_index=IGNORE_INDEX, reduction="none")
            out[r0: r0 + rstep] = nll.view(-1, k).double().sum(-1)
        return out
    for r in range(rows):  # slices of positions within a row
        for p0 in range(0, k, step):
            nll = F.cross_entropy(logits[r, p0: p0 + step].float(), targets[r, p0: p0 + step],
                                  ignore_index=IGNORE_INDEX, reduction="none")
            out[r] += nll.double().sum()
    return out


def _nll_forward(model, head, keep: int | None, targets: torch.Tensor, chunk_tokens: int,
                 options: ScoringOptions, **kw) -> tuple[torch.Tensor, int, int]:
    """One forward; per-row NLL sums float64 [rows] over targets [rows, k] (aligned to the last positions).

    Returns (sums, positions that reached the output layer, most positions whose logits existed at once).
    With `head` the output module is intercepted and logits are built in slices of `chunk_tokens`.
    """
    if head is None:
        logits = _forward(model, keep, **kw).logits
        kk = logits.shape[1]
        sums = _logits_nll_sums(logits, targets[:, -kk:].to(logits.device), options.nll_chunk_bytes)
        return sums, logits.shape[0] * kk, logits.shape[0] * kk
    from .output_head import row_nll_sums

    got: dict[str, Any] = {}

    def fn(hidden: torch.Tensor) -> None:  # [rows, kk, H], inside the model's forward
        tg = targets[:, -hidden.shape[1]:].to(hidden.device)
        got["sums"] = row_nll_sums(head, hidden, tg, chunk_tokens)
        got["positions"] = hidden.shape[0] * hidden.shape[1]
        got["at_once"] = min(chunk_tokens, int((tg != IGNORE_INDEX).sum()))

    with head.intercept(fn):
        _forward(model, keep, **kw)
    if "sums" not in got:
        raise RuntimeError("the model's forward did not call its output module; use keep_only_scored=False")
    return got["sums"], got["positions"], got["at_once"]


# --------------------------------------------------------------------------- the steps of a pass
def _encode_contexts(model, head, plan: _Plan, pad_token_id: int, device,
                     stats: ScoringStats) -> tuple[list, list, int]:
    """Key/value cache of the distinct contexts: per layer keys/values [n_ctx, h, P, d], left-padded to P."""
    cache_k: list[torch.Tensor] = []
    cache_v: list[torch.Tensor] = []
    p_all = max((len(c) for c in plan.contexts), default=0)
    for chunk in plan.ctx_chunks:
        s = max(len(plan.contexts[i]) for i in chunk)
        ids = torch.full((len(chunk), s), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), s), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, s - len(plan.contexts[i]):] = torch.tensor(plan.contexts[i])
            mask[row, s - len(plan.contexts[i]):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = _forward_without_logits(model, head, input_ids=ids.to(device), attention_mask=mask.to(device),
                                      position_ids=pos.to(device), use_cache=True)
        positions = 0 if head is not None else out.logits.shape[0] * out.logits.shape[1]
        stats.add_call(int(mask.sum()), ids.numel(), positions, positions)
        idx = torch.tensor(chunk, device=device)
        for li, layer in enumerate(out.past_key_values.layers):
            if len(cache_k) <= li:
                shape = (len(plan.contexts), layer.keys.shape[1], p_all)
                cache_k.append(layer.keys.new_zeros(shape + tuple(layer.keys.shape[3:])))
                cache_v.append(layer.values.new_zeros(shape + tuple(layer.values.shape[3:])))
            cache_k[li][idx, :, p_all - s:] = layer.keys
            cache_v[li][idx, :, p_all - s:] = layer.values
        del out
    return cache_k, cache_v, p_all


def _pad_chunk(plan: _Plan, chunk: list[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """input_ids, position_ids, targets [n, k] and attention_mask [n, P + k] (P: cached context) of a chunk.

    With sharing the new tokens are right-padded after the left-padded context and all of them from the row's
    offset on are scored; without, ``[prefix, cont[:-1]]`` is left-padded and the last len(cont) positions are scored.
    """
    n, k = len(chunk), max(len(plan.news[r]) for r in chunk)
    p = max(plan.ctx_lens[r] for r in chunk)
    ids = torch.full((n, k), pad_token_id, dtype=torch.long)
    targets = torch.full((n, k), IGNORE_INDEX, dtype=torch.long)
    new_mask = torch.zeros((n, k), dtype=torch.long)
    ctx_mask = torch.zeros((n, p), dtype=torch.long)
    for row, r in enumerate(chunk):
        new, c = plan.news[r], len(plan.conts[r])
        a = 0 if plan.share else k - len(new)
        ids[row, a: a + len(new)] = torch.tensor(new)
        new_mask[row, a: a + len(new)] = 1
        b = plan.offsets[r] if plan.share else k - c
        targets[row, b: b + c] = torch.tensor(plan.conts[r])
        ctx_mask[row, p - plan.ctx_lens[r]:] = 1
    if plan.share:
        pos = torch.tensor([plan.ctx_lens[r] for r in chunk])[:, None] + torch.arange(k)[None, :]
    else:
        pos = (new_mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": torch.cat([ctx_mask, new_mask], dim=1), "position_ids": pos,
            "targets": targets, "new_mask": new_mask}


def _score_chunk(model, head, plan: _Plan, cache: tuple[list, list, int], chunk: list[int], pad_token_id: int,
                 device, options: ScoringOptions, stats: ScoringStats) -> torch.Tensor:
    """NLL sums float64 [len(chunk)] (CPU) of one chunk of rows: one forward call."""
    from transformers import DynamicCache

    batch = _pad_chunk(plan, chunk, pad_token_id)
    kw: dict[str, Any] = {"use_cache": False}
    if plan.share:
        cache_k, cache_v, p_all = cache
        p = max(plan.ctx_lens[r] for r in chunk)
        idx = torch.tensor([plan.row_ctx[r] for r in chunk], device=device)
        kw = {"use_cache": True, "past_key_values": DynamicCache(ddp_cache_data=[
            (ck.index_select(0, idx)[:, :, p_all - p:], cv.index_select(0, idx)[:, :, p_all - p:])
            for ck, cv in zip(cache_k, cache_v)])}
    k = batch["input_ids"].shape[1]
    scored = k if plan.share else max(len(plan.conts[r]) for r in chunk)
    sums, positions, at_once = _nll_forward(
        model, head, scored if options.keep_only_scored else None, batch["targets"], slice_tokens(model, options),
        options, input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
        position_ids=batch["position_ids"].to(device), **kw)
    kw.clear()
    stats.add_call(int(batch["new_mask"].sum()), batch["input_ids"].numel(), positions, at_once)
    return sums.cpu()


def _align_calls(model, head, n_extra: int, pad_token_id: int, device, stats: ScoringStats) -> None:
    """`n_extra` forward calls on a 2-token dummy row, so collective calls stay aligned across ranks."""
    ids = torch.full((1, 2), pad_token_id, dtype=torch.long, device=device)
    for _ in range(n_extra):
        _forward_without_logits(model, head, input_ids=ids, attention_mask=torch.ones_like(ids),
                                position_ids=torch.arange(2, device=device)[None], use_cache=False)
        stats.add_call(0, 0, 0, 0)


# --------------------------------------------------------------------------- the entry points
@torch.no_grad()
def score_continuations(model, prefixes: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                        max_tokens: int, pad_token_id: int, device: torch.device | None = None,
                        options: ScoringOptions = ScoringOptions(),
                        shared_lens: Sequence[int] | None = None) -> tuple[torch.Tensor, ScoringStats]:
    """Mean NLL of each continuation given its prefix: (float64 tensor [R] on CPU, counters of the pass).

    prefixes[r]: token ids (>= 1), continuations[r]: token ids (>= 1) scored after it. `shared_lens[r]`: how many
    leading prefix tokens rows may share through the key/value cache (default: all but the last; exact either way).
    """
    if len(prefixes) != len(continuations):
        raise ValueError("prefixes and continuations differ in length")
    if any(len(p) < 1 for p in prefixes) or any(len(c) < 1 for c in continuations):
        raise ValueError("every prefix and every continuation needs at least one token")
    device = device or next(model.parameters()).device
    plan = plan_rows(model, prefixes, continuations, max_tokens, options, shared_lens)
    n_calls = max_over_ranks(len(plan.ctx_chunks) + len(plan.row_chunks), device)
    stats = ScoringStats(shared_prefix=bool(plan.share))
    costs = torch.empty(len(prefixes), dtype=torch.float64)
    head = None
    if options.keep_only_scored:
        from .output_head import OutputHead

        head = OutputHead(model)
    was_training = model.training
    if options.eval_mode:
        model.eval()
    try:
        cache = _encode_contexts(model, head, plan, pad_token_id, device, stats)
        for chunk in plan.row_chunks:
            sums = _score_chunk(model, head, plan, cache, chunk, pad_token_id, device, options, stats)
            for row, r in enumerate(chunk):
                costs[r] = sums[row] / len(plan.conts[r])
        del cache
        _align_calls(model, head, n_calls - stats.forward_calls, pad_token_id, device, stats)
    finally:
        model.train(was_training)
    return costs, stats


def cost_matrices(model, prompts: list[list[int]], traces: list[list[list[int]]], fork_ids: list[int], *,
                  match_tokens: int | None, max_tokens: int, pad_token_id: int, device: torch.device | None = None,
                  options: ScoringOptions = ScoringOptions(),
                  layout: LayoutIds | None = None) -> tuple[list[np.ndarray], ScoringStats]:
    """SSFT's matching costs: per question b, cost[b] float64 [N, M_b] (N = len(fork_ids)) with
    C[i, j] = mean NLL of trace_j[:match_tokens] after (prompt, span_i) (None: the whole trace), no gradient.
    span_i = `layout.fork_span` (the layout's text around fork_i); ``prompt + before`` is shared by the question's
    rows, and only trace tokens are scored.
    """
    prefixes, conts, where, shared = [], [], [], []
    n_before = len(layout.before) if layout is not None else 0
    for b, (p, ts) in enumerate(zip(prompts, traces)):
        for i, fid in enumerate(fork_ids):
            span = fork_span(fid, layout)[0]
            for j, t in enumerate(ts):
                prefixes.append(list(p) + span)
                shared.append(len(p) + n_before)
                conts.append(t if match_tokens is None else t[:match_tokens])
                where.append((b, i, j))
    flat, stats = score_continuations(model, prefixes, conts, max_tokens, pad_token_id, device, options, shared)
    costs = [np.zeros((len(fork_ids), len(ts))) for ts in traces]
    for (b, i, j), c in zip(where, flat.tolist()):
        costs[b][i, j] = c
    return costs, stats
