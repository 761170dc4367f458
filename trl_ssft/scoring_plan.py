"""Planning of the matching pass (`scoring.py`): which rows go into which forward call, and what a model allows.

Kept apart from `scoring.py` (which runs the forwards) so each fits on a screen: chunking under a token or
byte budget (`plan_chunks`, `plan_chunks_2d`), a model-aware byte estimate (`estimate_bytes`), and whether
a left-padded key/value cache is exact for a model (`supports_prefix_cache`). No forward runs here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


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
