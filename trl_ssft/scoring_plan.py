"""Planning of the matching pass (`scoring.py`): which rows go into which forward call, and what a model allows.

Kept apart from `scoring.py` (which runs the forwards) so each fits on a screen: chunking under a token or
byte budget (`plan_chunks`, `plan_chunks_2d`), a model-aware byte estimate (`estimate_bytes`), whether
a left-padded key/value cache is exact for a model (`supports_prefix_cache`), and the plan of a scoring pass
(`plan_rows`: shared contexts, fed tokens, scored targets, forward calls). No forward runs here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .scoring import ScoringOptions


def plan_chunks(lengths: Sequence[int], max_tokens: int, sort: bool = True) -> list[list[int]]:
    """Group row indices, sorted by length, into chunks with rows x max_len <= max_tokens (>= 1 row each)."""
    return plan_chunks_2d([0] * len(lengths), lengths, lambda rows, a, b: rows * b <= max_tokens, sort)


def plan_chunks_2d(ctx_lens: Sequence[int], new_lens: Sequence[int], fits: Callable[[int, int, int], bool],
                   sort: bool = True) -> list[list[int]]:
    """Chunks of row indices such that ``fits(rows, max ctx_len, max new_len)`` holds (>= 1 row each).

    Rows are taken in order of (ctx_len + new_len, new_len) when `sort`, else in their given order.
    """
    order = list(range(len(new_lens)))
    if sort:
        order.sort(key=lambda r: (ctx_lens[r] + new_lens[r], new_lens[r]))
    chunks: list[list[int]] = []
    cur: list[int] = []
    cmax = nmax = 0
    for r in order:
        c2, n2 = max(cmax, ctx_lens[r]), max(nmax, new_lens[r])
        if cur and not fits(len(cur) + 1, c2, n2):
            chunks.append(cur)
            cur, c2, n2 = [], ctx_lens[r], new_lens[r]
        cur.append(r)
        cmax, nmax = c2, n2
    if cur:
        chunks.append(cur)
    return chunks


def _config(model):
    cfg = getattr(model, "config", None)
    return cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg


def estimate_bytes(model) -> dict[str, float]:
    """Rough bytes of a no-grad forward: per context token, per new token (besides logits), per logit position.

    ``ctx``: the key/value cache of one token over all layers. ``new``: the cache plus the live
    activations of one layer (hidden states, MLP intermediate, attention scores are not counted: sdpa
    and flash attention keep them O(length)). ``logit``: one position's logits in the model dtype.
    """
    cfg = _config(model)
    param = next(model.parameters())
    elt = param.element_size() if param.is_floating_point() else 2
    hidden = int(getattr(cfg, "hidden_size", 1024))
    layers = int(getattr(cfg, "num_hidden_layers", 12))
    heads = int(getattr(cfg, "num_attention_heads", 16))
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    inter = int(getattr(cfg, "intermediate_size", 4 * hidden))
    vocab = int(getattr(cfg, "vocab_size", 32000))
    kv = 2 * layers * kv_heads * head_dim * elt
    act = (6 * hidden + 3 * inter) * elt
    return {"ctx": float(kv), "new": float(kv + act), "logit": float(vocab * elt)}


def supports_prefix_cache(model) -> bool:
    """True when every layer is plain full attention, so a left-padded, masked key/value cache is exact."""
    cfg = _config(model)
    if cfg is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return all(t == "full_attention" for t in types)
    window = getattr(cfg, "sliding_window", None)
    return window is None or getattr(cfg, "use_sliding_window", True) is False


# --------------------------------------------------------------------------- rows -> forward calls
def slice_tokens(model, options: ScoringOptions) -> int:
    """Positions per logits slice: `logits_chunk_tokens`, lowered so fp32 logits fit `nll_chunk_bytes`."""
    if options.nll_chunk_bytes is None:
        return options.logits_chunk_tokens
    per_pos = _vocab(model) * 4 * 2  # fp32 copy + log-softmax
    return max(1, min(options.logits_chunk_tokens, options.nll_chunk_bytes // per_pos))


def _vocab(model) -> int:
    return int(getattr(_config(model), "vocab_size", 32000))


@dataclass
class _Plan:
    """Rows as (context, new tokens), and the forward calls that score them."""

    share: bool
    contexts: list[tuple[int, ...]]  # distinct contexts (prefix[:-1]); encoded once when `share`
    row_ctx: list[int]  # row -> its context's index
    ctx_lens: list[int]  # row -> tokens taken from the cache (0 without sharing)
    news: list[list[int]]  # row -> tokens fed: [prefix[shared:], cont[:-1]] or [prefix, cont[:-1]]
    conts: list[list[int]]  # row -> scored tokens
    offsets: list[int]  # row -> new tokens fed before the first scored target (sharing only)
    ctx_chunks: list[list[int]] = field(default_factory=list)
    row_chunks: list[list[int]] = field(default_factory=list)


def _fits(model, max_tokens: int, options: ScoringOptions) -> Callable[[int, int, int], bool]:
    """``fits(rows, ctx_len, new_len)``: a forward call within `max_tokens` and `options.max_bytes`."""
    est = estimate_bytes(model) if options.max_bytes is not None else None
    sliced = slice_tokens(model, options)

    def fits(rows: int, ctx_len: int, new_len: int) -> bool:
        if rows * (ctx_len + new_len) > max_tokens:
            return False
        if est is None:
            return True
        if options.keep_only_scored:  # one slice of logits, its fp32 copy and log-softmax
            logits = min(rows * new_len, sliced) * (est["logit"] + 8 * _vocab(model))
        else:
            logits = rows * (ctx_len + new_len) * est["logit"]
        return rows * (ctx_len * est["ctx"] + new_len * est["new"]) + logits <= options.max_bytes

    return fits


def plan_rows(model, prefixes: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], max_tokens: int,
              options: ScoringOptions, shared_lens: Sequence[int] | None = None) -> _Plan:
    """Decide prompt sharing and split the rows (and distinct contexts) into forward calls.

    `shared_lens[r]`: the tokens of prefix r that may come from a shared cache (default ``len(prefix) - 1``)."""
    shared = [len(p) - 1 for p in prefixes] if shared_lens is None else [int(n) for n in shared_lens]
    if any(not 0 <= n < len(p) for n, p in zip(shared, prefixes)):
        raise ValueError("shared_lens[r] must leave at least one prefix token to feed (0 <= n < len(prefix))")
    ctx_index: dict[tuple, int] = {}
    row_ctx = [ctx_index.setdefault(tuple(p[:n]), len(ctx_index)) for p, n in zip(prefixes, shared)]
    contexts = list(ctx_index)
    share = options.share_prefix
    saves = sum(shared) > sum(len(c) for c in contexts)
    usable = supports_prefix_cache(model) and all(len(c) >= 1 for c in contexts)
    if share is None:
        share = usable and saves
    elif share and not usable:
        raise ValueError("share_prefix=True needs a full-attention model and prefixes of >= 2 tokens")
    conts = [list(c) for c in continuations]
    n_rows = len(prefixes)
    if share:
        plan = _Plan(True, contexts, row_ctx, [len(contexts[row_ctx[r]]) for r in range(n_rows)],
                     [list(prefixes[r][shared[r]:]) + conts[r][:-1] for r in range(n_rows)], conts,
                     [len(prefixes[r]) - shared[r] - 1 for r in range(n_rows)])
    else:
        plan = _Plan(False, contexts, row_ctx, [0] * n_rows,
                     [list(prefixes[r]) + conts[r][:-1] for r in range(n_rows)], conts, [0] * n_rows)
    fits = _fits(model, max_tokens, options)
    if share:
        plan.ctx_chunks = plan_chunks_2d([0] * len(contexts), [len(c) for c in contexts],
                                         lambda rows, a, b: fits(rows, 0, b), options.sort_rows)
    plan.row_chunks = plan_chunks_2d(plan.ctx_lens, [len(x) for x in plan.news], fits, options.sort_rows)
    return plan
