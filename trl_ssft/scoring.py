"""Per-sequence mean next-token loss of many continuations, without gradient and in bounded memory.

This is the matching pass: for R rows ``prefix_r + cont_r`` it returns
``cost_r = mean_t -log p(cont_r[t] | prefix_r, cont_r[:t])`` (the prefix's own tokens, including the
forking token that ends it, are not scored).

Every optimisation below is exact (same numbers up to float rounding) and on by default; each can be
turned off through a keyword of `score_continuations` or, for callers that cannot pass keywords (the
trainer's `ssft_cost_matrices`), through the `scoring_options` context manager:

- **shared prompt** (``share_prefix``): rows whose prefixes agree on all but the last token (in SSFT:
  the N x M rows ``[prompt, fork_i, trace_j]`` of one question share ``prompt``) get that context
  computed once. One forward over the distinct contexts returns their key/value cache; each row then
  runs only ``[fork_i, trace_j[:-1]]`` on top of its question's cache (left-padded to the longest
  context of the chunk, masked, positions continued explicitly). Used when the model's layers are
  all plain full attention (no sliding window, no recurrent state) and some context is shared.
- **no wasted positions**: the last continuation token is never fed (its prediction is unused), and
  only the scored positions' logits are built (``logits_to_keep``; ``keep_only_scored``).
- **length sorting** (``sort_rows``): rows are sorted by length before chunking, so a chunk pads little.
- **bounded memory**: a forward call holds at most ``max_tokens`` padded tokens (rows x (context +
  new tokens)) and, when ``max_bytes`` is given, at most that many bytes by a model-aware estimate of
  activations, key/value cache and logits (`estimate_bytes`). The float32 log-softmax runs on slices of
  at most ``nll_chunk_bytes``: the fp32 upcast of the logits is never made for a whole chunk.
- **eval mode** (no dropout) during scoring; the model's mode is restored afterwards.

Under several processes the number of forward calls is made equal on every rank (extra calls on a
2-token dummy row), as FSDP / ZeRO-3 require.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

#: Defaults of the optional keywords of `score_continuations` (change with `scoring_options`).
DEFAULT_OPTIONS: dict = {
    "share_prefix": None,  # None: when the model supports it and a context is shared; True: require; False: off
    "sort_rows": True,
    "keep_only_scored": True,
    "max_bytes": None,
    "nll_chunk_bytes": 256 * 2**20,
    "eval_mode": True,
}


#: Counters summed over every call of `score_continuations` in this process (for benchmarks).
TOTALS: dict[str, int] = {"calls": 0, "forward_calls": 0, "tokens": 0, "padded_tokens": 0, "logit_positions": 0}


@contextlib.contextmanager
def scoring_options(**options):
    """Temporarily change the defaults of `score_continuations` (e.g. ``share_prefix=False``)."""
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown scoring options {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}")
    saved = dict(DEFAULT_OPTIONS)
    DEFAULT_OPTIONS.update(options)
    try:
        yield
    finally:
        DEFAULT_OPTIONS.clear()
        DEFAULT_OPTIONS.update(saved)


# --------------------------------------------------------------------------- planning
def plan_chunks(lengths: Sequence[int], max_tokens: int, sort: bool = True) -> list[list[int]]:
    """Group row indices, sorted by length, into chunks with rows x max_len <= max_tokens (>= 1 row each)."""
    return plan_chunks_2d([0] * len(lengths), lengths, lambda rows, a, b: rows * b <= max_tokens, sort)


def plan_chunks_2d(ctx_lens: Sequence[int], new_lens: Sequence[int], fits, sort: bool = True) -> list[list[int]]:
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


# --------------------------------------------------------------------------- forward + nll
def _forward(model, keep: int | None, **kw):
    if keep is not None:
        try:
            return model(**kw, logits_to_keep=keep)
        except TypeError:  # a model without logits_to_keep
            pass
    return model(**kw)


def _row_nll_sums(logits: torch.Tensor, targets: torch.Tensor, max_bytes: int | None) -> torch.Tensor:
    """Sum over positions of -log p(target) per row, float64 [rows]; targets == -100 are skipped.

    logits [rows, k, V] (any dtype), targets [rows, k]. The float32 upcast is done on slices of at most
    `max_bytes` (rows first, then positions), so it never costs a whole chunk's logits in fp32.
    """
    rows, k, vocab = logits.shape
    out = torch.zeros(rows, dtype=torch.float64, device=logits.device)
    per_pos = vocab * 4 * 2  # fp32 copy + log-softmax
    step = k if max_bytes is None else max(1, int(max_bytes // per_pos))
    if step >= k:  # whole rows per slice
        rstep = rows if max_bytes is None else max(1, step // k)
        for r0 in range(0, rows, rstep):
            x = logits[r0: r0 + rstep].float()
            nll = F.cross_entropy(x.reshape(-1, vocab), targets[r0: r0 + rstep].reshape(-1),
                                  ignore_index=IGNORE_INDEX, reduction="none")
            out[r0: r0 + rstep] = nll.view(-1, k).double().sum(-1)
    else:  # slices of positions within a row
        for r in range(rows):
            for p0 in range(0, k, step):
                x = logits[r, p0: p0 + step].float()
                nll = F.cross_entropy(x, targets[r, p0: p0 + step], ignore_index=IGNORE_INDEX, reduction="none")
                out[r] += nll.double().sum()
    return out


# --------------------------------------------------------------------------- the entry point
@torch.no_grad()
def score_continuations(
    model,
    prefixes: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    max_tokens: int,
    pad_token_id: int,
    device: torch.device | None = None,
    *,
    share_prefix: bool | None = "default",
    sort_rows: bool | str = "default",
    keep_only_scored: bool | str = "default",
    max_bytes: int | None | str = "default",
    nll_chunk_bytes: int | None | str = "default",
    eval_mode: bool | str = "default",
    stats: dict | None = None,
) -> torch.Tensor:
    """Mean NLL of each continuation given its prefix: float64 tensor [R] on CPU.

    prefixes[r]: token ids (>= 1), continuations[r]: token ids (>= 1) scored after it.
    Keywords left at ``"default"`` take their value from `DEFAULT_OPTIONS` (see the module docstring).
    `stats`, when given, is filled with counters: forward calls, tokens fed (real and padding),
    logit positions built, and whether the shared-prefix path ran.
    """
    opts = {k: (DEFAULT_OPTIONS[k] if v == "default" else v) for k, v in dict(
        share_prefix=share_prefix, sort_rows=sort_rows, keep_only_scored=keep_only_scored, max_bytes=max_bytes,
        nll_chunk_bytes=nll_chunk_bytes, eval_mode=eval_mode).items()}
    if len(prefixes) != len(continuations):
        raise ValueError("prefixes and continuations differ in length")
    if any(len(p) < 1 for p in prefixes) or any(len(c) < 1 for c in continuations):
        raise ValueError("every prefix and every continuation needs at least one token")
    device = device or next(model.parameters()).device
    st = stats if stats is not None else {}
    st.update(forward_calls=0, tokens=0, padded_tokens=0, logit_positions=0, shared_prefix=False)

    # rows -> (context, new tokens): the context is everything the row shares before its last prefix token
    ctx_index: dict[tuple, int] = {}
    row_ctx = []
    for p in prefixes:
        row_ctx.append(ctx_index.setdefault(tuple(p[:-1]), len(ctx_index)))
    contexts = list(ctx_index)
    share = opts["share_prefix"]
    shared_saves = sum(len(p) - 1 for p in prefixes) > sum(len(c) for c in contexts)
    usable = supports_prefix_cache(model) and all(len(c) >= 1 for c in contexts)
    if share is None:
        share = usable and shared_saves
    elif share and not usable:
        raise ValueError("share_prefix=True needs a full-attention model and prefixes of >= 2 tokens")

    est = estimate_bytes(model) if opts["max_bytes"] is not None else None

    def fits(rows, ctx_len, new_len):
        if rows * (ctx_len + new_len) > max_tokens:
            return False
        if est is not None:
            logit_pos = new_len if opts["keep_only_scored"] else ctx_len + new_len
            need = rows * (ctx_len * est["ctx"] + new_len * est["new"] + logit_pos * est["logit"])
            return need <= opts["max_bytes"]
        return True

    n_rows = len(prefixes)
    conts = [list(c) for c in continuations]
    if share:
        ctx_lens = [len(contexts[row_ctx[r]]) for r in range(n_rows)]
        news = [[prefixes[r][-1]] + conts[r][:-1] for r in range(n_rows)]
        ctx_chunks = plan_chunks_2d([0] * len(contexts), [len(c) for c in contexts],
                                    lambda rows, a, b: fits(rows, 0, b), opts["sort_rows"])
    else:
        ctx_lens = [0] * n_rows
        news = [list(prefixes[r]) + conts[r][:-1] for r in range(n_rows)]
        ctx_chunks = []
    row_chunks = plan_chunks_2d(ctx_lens, [len(x) for x in news], fits, opts["sort_rows"])
    n_calls = _sync_num_calls(len(ctx_chunks) + len(row_chunks), device)
    costs = torch.empty(n_rows, dtype=torch.float64)
    was_training = model.training
    if opts["eval_mode"]:
        model.eval()
    try:
        # 1. the distinct contexts, once each: key/value cache, left-padded into one [n_ctx, h, P, d] per layer
        cache_k: list[torch.Tensor] = []
        cache_v: list[torch.Tensor] = []
        p_all = max((len(c) for c in contexts), default=0)
        for chunk in ctx_chunks:
            s = max(len(contexts[i]) for i in chunk)
            ids = torch.full((len(chunk), s), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), s), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, s - len(contexts[i]):] = torch.tensor(contexts[i])
                mask[row, s - len(contexts[i]):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = _forward(model, 1, input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=pos.to(device), use_cache=True)
            st["forward_calls"] += 1
            st["tokens"] += int(mask.sum())
            st["padded_tokens"] += ids.numel()
            st["logit_positions"] += len(chunk)
            layers = out.past_key_values.layers
            idx = torch.tensor(chunk, device=device)
            for li, layer in enumerate(layers):
                if len(cache_k) <= li:
                    shape = (len(contexts),) + tuple(layer.keys.shape[1:2]) + (p_all,) + tuple(layer.keys.shape[3:])
                    cache_k.append(torch.zeros(shape, dtype=layer.keys.dtype, device=device))
                    cache_v.append(torch.zeros(shape[:3] + tuple(layer.values.shape[3:]),
                                               dtype=layer.values.dtype, device=device))
                cache_k[li][idx, :, p_all - s:] = layer.keys
                cache_v[li][idx, :, p_all - s:] = layer.values
            del out, layers

        # 2. the rows: [context (cache or tokens), new tokens], scored on the new tokens' positions
        from transformers import DynamicCache

        for chunk in row_chunks:
            n = len(chunk)
            p = max(ctx_lens[r] for r in chunk)
            k = max(len(news[r]) for r in chunk)
            targets = torch.full((n, k), IGNORE_INDEX, dtype=torch.long)
            ids = torch.full((n, k), pad_token_id, dtype=torch.long)
            new_mask = torch.zeros((n, k), dtype=torch.long)
            for row, r in enumerate(chunk):
                c = len(conts[r])
                if share:  # right-padded new tokens: all of them are scored
                    ids[row, : len(news[r])] = torch.tensor(news[r])
                    new_mask[row, : len(news[r])] = 1
                    targets[row, :c] = torch.tensor(conts[r])
                else:  # left-padded [prefix, cont[:-1]]: the last c positions are scored
                    ids[row, k - len(news[r]):] = torch.tensor(news[r])
                    new_mask[row, k - len(news[r]):] = 1
                    targets[row, k - c:] = torch.tensor(conts[r])
            if share:
                idx = torch.tensor([row_ctx[r] for r in chunk], device=device)
                cache = DynamicCache(ddp_cache_data=[
                    (ck.index_select(0, idx)[:, :, p_all - p:], cv.index_select(0, idx)[:, :, p_all - p:])
                    for ck, cv in zip(cache_k, cache_v)])
                ctx_mask = torch.zeros((n, p), dtype=torch.long)
                starts = torch.tensor([ctx_lens[r] for r in chunk])
                for row, r in enumerate(chunk):
                    ctx_mask[row, p - ctx_lens[r]:] = 1
                mask = torch.cat([ctx_mask, new_mask], dim=1)
                pos = starts[:, None] + torch.arange(k)[None, :]
                kw = dict(past_key_values=cache, use_cache=True)
            else:
                mask = new_mask
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                kw = dict(use_cache=False)
            # share: every new position is scored; else only the last (longest continuation) positions
            scored = k if share else max(len(conts[r]) for r in chunk)
            keep = scored if opts["keep_only_scored"] else None
            out = _forward(model, keep, input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=pos.to(device), **kw)
            logits = out.logits
            del out
            kw.clear()
            kk = logits.shape[1]
            st["forward_calls"] += 1
            st["tokens"] += int(new_mask.sum())
            st["padded_tokens"] += ids.numel()
            st["logit_positions"] += n * kk
            tg = targets[:, k - kk:] if kk <= k else targets
            sums = _row_nll_sums(logits, tg.to(logits.device), opts["nll_chunk_bytes"]).cpu()
            del logits
            for row, r in enumerate(chunk):
                costs[r] = sums[row] / len(conts[r])
        st["shared_prefix"] = bool(share)
        for _ in range(n_calls - len(ctx_chunks) - len(row_chunks)):  # keep collective forwards aligned
            ids = torch.full((1, 2), pad_token_id, dtype=torch.long, device=device)
            _forward(model, 1, input_ids=ids, attention_mask=torch.ones_like(ids),
                     position_ids=torch.arange(2, device=device)[None], use_cache=False)
            st["forward_calls"] += 1
    finally:
        model.train(was_training)
    TOTALS["calls"] += 1
    for key in ("forward_calls", "tokens", "padded_tokens", "logit_positions"):
        TOTALS[key] += st[key]
    return costs
