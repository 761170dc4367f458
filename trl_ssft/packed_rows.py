"""Padding-free set-loss rows: the matched rows of a micro-batch concatenated into packed rows.

The padded layout (`rows.py`) runs the M matched rows ``[prompt, fork_sigma(j), trace_j]`` of a micro-batch
as ``[rows, S]`` slices, right-padded to the slice's longest row. The padding-free layout takes the very same
rows (`rows.build_rows`, padding dropped), so anything that changes how a row is formed flows through, and
concatenates them into packed rows ``[1, L]`` (L <= the slice budget), each row a *segment* with its own
position ids ``0 .. len - 1``. A slice of the set loss is one packed row. The first label of every segment
is ignored, so no position predicts across a boundary (the padded path never predicts a row's first token
either): loss and gradients equal the padded path's.

Segments stay apart through the attention kernel, chosen per attention implementation in one place
(`packed_attention`, registry `PACKED_ATTENTION`):

- ``flash`` (any flash-attention implementation, transformers' `is_flash_attention_requested`): the
  variable-length kernel, with ``cu_seq_lens_q/k`` and ``max_length_q/k`` passed explicitly (transformers
  5.16 - 5.23 accept them as `FlashAttentionKwargs` and call ``flash_attn_varlen_func``). No work across
  segments.
- ``sdpa`` / ``eager``: transformers' own packed-sequence masks: with position ids that restart, no 2D
  attention mask and no cache, ``create_causal_mask`` finds the segments (`find_packed_sequence_indices`)
  and builds a block-causal mask (boolean for sdpa, additive float for eager; sliding windows included).
  Checked on transformers 5.16 and 5.23: logits of a packed segment equal a separate run (tests). The mask
  and the attention scores are ``[L, L]``: quadratic in the packed row, with work across segments that is
  masked away. So with these implementations a packed row is also kept to L^2 <= budget x longest row, the
  most a padded slice of the same budget builds (`pack_budget`): with the automatic budget of LoRA / QLoRA
  (the longest row) no packed row is longer than the longest row of its micro-batch, and packing fills the
  room that shorter rows leave. (INTEGRATION.md's "position ids alone do not isolate segments" probe
  left the model's default key/value cache on, which turns the detection off; the set loss passes
  ``use_cache=False``.)
- anything else (``flex_attention``: it crashed on CPU; custom kernels) is refused, as are models whose
  layers are not all full or sliding-window attention (linear attention / state-space layers carry state
  across segments; chunked attention counts chunks from the start of the packed row), or
  whose modeling code does not build its masks with transformers' masking utilities.

The matching pass (`scoring.py`) stays padded on purpose: it computes each question's prompt once and
shares it through the key/value cache across the question's N x M rows, which saves far more than its
padding costs (its rows are ``[fork_i, trace_j[:T]]`` after the cache, sorted by length before chunking;
padding there is small), and transformers detects packed sequences only without a cache.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

import torch

from .output_head import IGNORE_INDEX

# Layer kinds under which a packed row is exact: each position attends within its own segment only.
_ATTENTION_LAYERS = ("full_attention", "sliding_attention")


def resolve_padding_free(explicit: bool | None, requested_by: Sequence[str]) -> bool:
    """The one decision "packed or padded" of the set loss, for both front ends.

    explicit: ``ssft_padding_free`` (None: follow the recipe). requested_by: the recipe options that ask for
    packing, as the user wrote them (e.g. ``["packing=True"]``, ``["sample_packing: true"]``).
    """
    if explicit is None:
        return bool(requested_by)
    if not explicit and requested_by:
        raise ValueError(
            f"{', '.join(requested_by)} asks for packed rows but ssft_padding_free is false. SSFT packs the matched "
            "rows of each micro-batch (padding-free set loss); remove one of the two settings."
        )
    return bool(explicit)


def _varlen_kwargs(position_ids: torch.Tensor, lengths: list[int]) -> dict:
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=position_ids.device)
    longest = max(lengths)
    return {"position_ids": position_ids, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest,
            "max_length_k": longest}


def _mask_kwargs(position_ids: torch.Tensor, lengths: list[int]) -> dict:
    return {"position_ids": position_ids}  # no attention_mask: transformers builds the packed-sequence mask


# kind -> (forward inputs besides input_ids from position ids [1, L] and segment lengths, quadratic in L?)
PACKED_ATTENTION: dict[str, tuple[Callable[[torch.Tensor, list[int]], dict], bool]] = {
    "flash": (_varlen_kwargs, False),
    "sdpa": (_mask_kwargs, True),
    "eager": (_mask_kwargs, True),
}


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT


def packed_attention(model: torch.nn.Module) -> str:
    """How packed segments stay apart under `model`'s attention: a key of `PACKED_ATTENTION`.

    Raises `ValueError` naming the setting and the fix when a packed row cannot be exact.
    """
    base = _base_model(model)
    cfg = _text_config(base)
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    fix = "set packing off (TRL `packing` / `padding_free`, Axolotl `sample_packing`, or `ssft_padding_free: false`)"
    try:
        from transformers.utils.generic import is_flash_attention_requested
        flash = is_flash_attention_requested(requested_attention_implementation=impl)
    except ImportError:  # pragma: no cover - older transformers
        flash = "flash" in impl
    kind = "flash" if flash else impl
    if kind not in PACKED_ATTENTION:
        raise ValueError(
            f"SSFT's padding-free set loss cannot run exactly with attn_implementation={impl!r}: packed rows are "
            "supported with flash-attention (variable-length kernel), sdpa and eager (transformers' packed-sequence "
            f"masks). Set attn_implementation to one of those, or {fix}.")
    types = getattr(cfg, "layer_types", None) or getattr(cfg, "layers_block_type", None) or []
    other = sorted({str(t) for t in types} - set(_ATTENTION_LAYERS))
    if getattr(cfg, "is_encoder_decoder", False) or other:
        raise ValueError(
            f"SSFT's padding-free set loss needs a decoder whose layers are all full or sliding-window attention; "
            f"{type(base).__name__} has {other or 'an encoder-decoder layout'} (recurrent state or chunk boundaries "
            "would cross from one packed row into the next). "
            f"{fix[0].upper()}{fix[1:]}.")
    module = sys.modules.get(type(base).__module__)
    if kind != "flash" and not hasattr(module, "create_causal_mask"):
        raise ValueError(
            f"SSFT's padding-free set loss with attn_implementation={impl!r} relies on transformers' packed-sequence "
            f"masks, which {type(base).__name__}'s modeling code does not build. Use flash_attention_2, or {fix}.")
    return kind


def plan_packs(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Row indices per packed row: first-fit decreasing, each pack's total length <= `budget` (>= 1 row).

    Rows are taken longest first; a row longer than `budget` gets a pack of its own.
    """
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])
    packs: list[list[int]] = []
    room: list[int] = []
    for r in order:
        k = next((i for i, free in enumerate(room) if lengths[r] <= free), None)
        if k is None:
            packs.append([r])
            room.append(budget - lengths[r])
        else:
            packs[k].append(r)
            room[k] -= lengths[r]
    return packs


def pack_budget(lengths: Sequence[int], budget: int | None, min_budget: int, kind: str) -> int:
    """Most tokens of one packed row: the slice budget B (`budget`, or when None the longest row or `min_budget`,
    whichever is larger, as `rows.plan_slices`). With a mask-based kernel (quadratic in the packed row,
    `PACKED_ATTENTION`) also L^2 <= B x the longest row: a packed row's ``[L, L]`` mask and scores are never
    larger than those of a padded slice under the same budget (rows x longest^2 <= B x longest)."""
    longest = max(lengths)
    b = max(longest, min_budget) if budget is None else budget
    return min(b, math.isqrt(b * longest)) if PACKED_ATTENTION[kind][1] else b


def packed_row(ids: torch.Tensor, labels: torch.Tensor, lengths: Sequence[int], rows: Sequence[int],
               kind: str) -> dict[str, torch.Tensor]:
    """The forward inputs (with ``labels``) of one packed row ``[1, L]`` holding `rows` of right-padded
    ``ids/labels [R, S]`` (real lengths `lengths`), in that order; the first label of each segment is ignored."""
    seg = [int(lengths[r]) for r in rows]
    parts_ids = [ids[r, :n] for r, n in zip(rows, seg)]
    parts_lab = [labels[r, :n].clone() for r, n in zip(rows, seg)]
    for lab in parts_lab:
        lab[0] = IGNORE_INDEX
    position_ids = torch.cat([torch.arange(n, device=ids.device) for n in seg])[None]
    build = PACKED_ATTENTION[kind][0]
    return {"input_ids": torch.cat(parts_ids)[None], "labels": torch.cat(parts_lab)[None],
            **build(position_ids, seg)}


def packed_slices(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, budget: int | None, min_budget: int,
                  kind: str) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Set-loss slices of right-padded rows ``ids/mask/labels [R, S]`` as packed rows, and the filler slice
    (the shortest row alone) that `rows.sliced_set_loss` repeats with weight 0 to align ranks."""
    lengths = mask.sum(-1).tolist()
    packs = plan_packs(lengths, pack_budget(lengths, budget, min_budget, kind))
    shortest = min(range(len(lengths)), key=lambda r: lengths[r])
    return ([packed_row(ids, labels, lengths, p, kind) for p in packs],
            packed_row(ids, labels, lengths, [shortest], kind))


def describe(kind: str) -> str:
    """What the padding-free set loss does under attention `kind`, for the start-of-run line."""
    how = {"flash": "flash-attention's variable-length kernel (cu_seq_lens from the segment lengths)",
           "sdpa": "sdpa with transformers' block-causal packed-sequence masks",
           "eager": "eager attention with transformers' block-causal packed-sequence masks"}[kind]
    budget = "up to the set-loss slice budget (ssft_loss_slice_tokens; default: the longest row, or more rows "\
             "when rows.auto_slice_tokens says so)"
    if PACKED_ATTENTION[kind][1]:
        budget += (", and with a mask no larger than a padded slice's (L^2 <= budget x longest row); this kernel "
                   "computes masked attention across the packed rows, so packing saves padding, not attention work, "
                   "and ran 7-26 % slower than padded rows on CPU (docs/packing.md; flash_attention_2 skips that work)")
    return (f"the set loss runs padding-free: the matched rows of each micro-batch are concatenated with per-row "
            f"position ids into packed rows of {budget}, kept apart by {how}; exact (same loss and gradients as "
            "padded rows); one question per dataset row; the matching pass stays padded (prompts shared through "
            "the key/value cache)")


def packing_line(kind: str | None, request: str = "", notes: Sequence[str] = ()) -> str:
    """The one start-of-run line: what packing does in this SSFT run (`kind`: None for padded rows).

    request: the recipe options that asked for packing; notes: what the front end's related options mean here.
    """
    head = f"SSFT packing ({request})" if request else "SSFT packing"
    body = describe(kind) if kind is not None else "the set loss runs on padded rows (ssft_padding_free is off)"
    return f"{head}: {body}" + "".join(f"; {n}" for n in notes)


def first_batch_line(rows: int, layout: dict[str, int]) -> str:
    """What the first micro-batch's set loss ran: `rows` matched rows in ``layout["slices"]`` packed rows."""
    return (f"SSFT packing: first micro-batch: {rows} matched rows ({layout['tokens']} tokens) ran as "
            f"{layout['slices']} packed rows of {layout['fed']} tokens in all (padding-free)")
