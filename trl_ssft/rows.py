"""The matched rows of the set loss: built per micro-batch, run in token-budgeted slices, and scored
through the output module in chunks, so neither ``[rows, L, V]`` logits nor M traces' activations
need to exist at once.

A row is ``[prompt, fork_sigma(j), trace_j]`` (``[prompt, trace_j]`` without forking tokens), labels on
the trace (and on the forking token when it is trained). The loss of a micro-batch is
``sum of token NLL / denom`` (denom: the loss tokens of the whole gradient-accumulation window), the
same number whether the rows run in one forward or in slices.

Slices (`sliced_set_loss`): every slice but the last is forwarded and back-propagated at once (the
caller's `backward`, e.g. ``accelerator.backward`` under ``no_sync``), so its activations are freed
before the next slice; the last slice's loss is returned with its graph for the trainer's own backward
(the one that synchronises gradients under DDP). Under several processes the number of slices is
made equal on every rank (a max over ranks, then zero-weighted repeats of a real row), so FSDP / ZeRO-3
see the same forward and backward calls everywhere. With `packing` a slice is one packed row of the same
rows instead (padding-free; `packed_rows.py`), run through the same loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .distributed import is_distributed, max_over_ranks
from .layout import LayoutIds, fork_loss_tokens, fork_span
from .output_head import IGNORE_INDEX, OutputHead, chunked_nll_sum, shifted_targets, zero_from
from .packed_rows import packed_slices


def build_rows(prompts: Sequence[list[int]], traces: Sequence[list[list[int]]],
               assignments: Sequence, fork_ids: Sequence[int], fork_loss: bool, pad_id: int,
               layout: LayoutIds | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input_ids, attention_mask, labels ``[sum_b M_b, S]`` of the matched sequences.

    assignments[b]: token index per trace ([M_b]) or None (no forking token). The forking token comes with the
    text of `layout` around it (`layout.fork_span`; None: the token alone).
    """
    seqs, labs = [], []
    for p, ts, a in zip(prompts, traces, assignments):
        for j, t in enumerate(ts):
            if a is None:
                seqs.append(p + t)
                labs.append([IGNORE_INDEX] * len(p) + t)
            else:
                span, span_labels = fork_span(fork_ids[int(a[j])], layout, fork_loss)
                seqs.append(p + span + t)
                labs.append([IGNORE_INDEX] * len(p) + span_labels + t)
    s = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), s), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), s), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(seqs), s), dtype=torch.long)
    for r, (x, y) in enumerate(zip(seqs, labs)):
        ids[r, : len(x)] = torch.tensor(x)
        labels[r, : len(y)] = torch.tensor(y)
        mask[r, : len(x)] = 1
    return ids, mask, labels


def loss_tokens(traces: Sequence[list[list[int]]], fork_loss: bool, uses_tokens: bool,
                layout: LayoutIds | None = None) -> int:
    """Tokens that carry loss: trace tokens (+ the forking-token span per trace when it is trained)."""
    extra = fork_loss_tokens(layout, fork_loss) if uses_tokens else 0
    return sum(len(t) + extra for ts in traces for t in ts)


def auto_slice_tokens(model: torch.nn.Module) -> int:
    """Smallest slice budget worth having, in tokens, for ``ssft_loss_slice_tokens: None``.

    Slicing keeps one extra copy of a trainable output layer's gradient alive (the earlier slices' sum in
    ``.grad`` while the next backward builds its own). Rows are worth slicing apart only once their kept
    activations exceed that copy, so the budget is that gradient's bytes over a rough per-token estimate
    of the activations a forward keeps (hidden states per layer with gradient checkpointing; about
    10 x hidden + 3 x intermediate per layer without). Near 0 when the output layer is frozen (LoRA,
    QLoRA: only forking-token rows or adapters train there).
    """
    trained = [p for p in model.get_output_embeddings().parameters() if p.requires_grad]
    if not trained:
        return 0
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = int(getattr(cfg, "hidden_size", 1024))
    layers = int(getattr(cfg, "num_hidden_layers", 12))
    inter = int(getattr(cfg, "intermediate_size", 4 * hidden))
    per_layer = hidden if getattr(model, "is_gradient_checkpointing", False) else 10 * hidden + 3 * inter
    numel = sum(p.numel() for p in trained)  # gradients and activations share the model's dtype
    return int(numel // (layers * per_layer))


def plan_slices(lengths: Sequence[int], budget: int | None, min_budget: int = 0) -> list[list[int]]:
    """Row indices per slice, longest rows first, each slice with rows x longest <= `budget` (>= 1 row).

    `budget` None: the longest row or `min_budget`, whichever is larger (one long row, or several short
    ones, or every row when slicing would cost more than it saves: `auto_slice_tokens`).
    """
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])
    budget = max(max(lengths), min_budget) if budget is None else budget
    slices: list[list[int]] = []
    for r in order:
        if slices and (len(slices[-1]) + 1) * lengths[slices[-1][0]] <= budget:
            slices[-1].append(r)
        else:
            slices.append([r])
    return slices


def rows_nll_sum(model: torch.nn.Module, head: OutputHead, ids: torch.Tensor, mask: torch.Tensor,
                 labels: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """Sum of next-token NLL over the labelled positions of rows ``ids/mask/labels [R, S]`` (scalar, fp32)."""
    return inputs_nll_sum(model, head, {"input_ids": ids, "attention_mask": mask, "labels": labels}, chunk_tokens)


def inputs_nll_sum(model: torch.nn.Module, head: OutputHead, inputs: dict[str, torch.Tensor],
                   chunk_tokens: int) -> torch.Tensor:
    """Sum of next-token NLL over the labelled positions of one slice (scalar, fp32).

    inputs: ``labels [R, S]`` and the model's forward inputs (``input_ids [R, S]`` plus ``attention_mask`` for
    padded rows, or position ids and attention kwargs for a packed row, `packed_rows.packed_row`). One forward
    of `model` (which may be a DDP/FSDP wrapper around `head`'s model), without cache; logits are built for at
    most `chunk_tokens` positions at a time, inside that forward.
    """
    inputs = dict(inputs)
    pos, targets = shifted_targets(inputs.pop("labels"))
    out: dict[str, torch.Tensor] = {}

    def on_hidden(hidden: torch.Tensor) -> torch.Tensor:  # [R, S, H], inside the model's forward
        out["sum"] = chunked_nll_sum(head, hidden[pos], targets, chunk_tokens)
        return out["sum"]

    with head.intercept(on_hidden):
        outputs = model(**inputs, use_cache=False)
    # + exact 0 whose backward passes through the model's output first: FSDP2 gathers the output module's
    # parameters in hooks there, before the chunks' recompute needs them (output_head docstring)
    return out["sum"] + zero_from(getattr(outputs, "logits", None))


def padded_slices(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, slice_tokens: int | None,
                  min_slice_tokens: int = 0) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Set-loss slices of rows ``[R, S]`` (`plan_slices`), each cut to its longest row, and the filler slice (the
    shortest row alone) that `sliced_set_loss` repeats with weight 0 to align ranks."""
    lengths = mask.sum(-1).tolist()

    def sub(rows: list[int]) -> dict[str, torch.Tensor]:
        width = max(lengths[r] for r in rows)
        idx = torch.tensor(rows, device=ids.device)
        return {k: x.index_select(0, idx)[:, :width] for k, x in
                (("input_ids", ids), ("attention_mask", mask), ("labels", labels))}

    shortest = min(range(len(lengths)), key=lambda r: lengths[r])
    return [sub(s) for s in plan_slices(lengths, slice_tokens, min_slice_tokens)], sub([shortest])


def sliced_set_loss(model: torch.nn.Module, head: OutputHead, ids: torch.Tensor, mask: torch.Tensor,
                    labels: torch.Tensor, *, denom: float | torch.Tensor, slice_tokens: int | None, chunk_tokens: int,
                    scale: float = 1.0, backward: Callable[[torch.Tensor], None] | None = None,
                    min_slice_tokens: int = 0, packing: str | None = None,
                    stats: dict[str, int] | None = None) -> torch.Tensor:
    """``sum NLL / denom * scale`` of rows ``[R, S]`` (on the model's device), run in slices of `slice_tokens`.

    With `backward`, each slice but the last is back-propagated by it at once; the returned scalar is the
    last slice's loss (with its graph) plus the detached losses of the others, so its value is the loss of
    all rows and its backward adds the last slice's gradients. Without `backward` (evaluation, no grad) the
    slices are summed. `slice_tokens` None: the longest row per slice, at least `min_slice_tokens`
    (`plan_slices`). `packing`: a key of `packed_rows.PACKED_ATTENTION` (`packed_rows.packed_attention`): each
    slice is one packed row of up to the budget (padding-free, `packed_rows.packed_slices`); None: padded
    slices. `stats`: counters added in place (``slices``, ``tokens`` real, ``fed`` padding included).
    """
    if packing is None:
        slices, filler = padded_slices(ids, mask, labels, slice_tokens, min_slice_tokens)
    else:
        slices, filler = packed_slices(ids, mask, labels, slice_tokens, min_slice_tokens, packing)
    if stats is not None:
        stats["slices"] = stats.get("slices", 0) + len(slices)
        stats["tokens"] = stats.get("tokens", 0) + int(mask.sum())
        stats["fed"] = stats.get("fed", 0) + sum(s["input_ids"].numel() for s in slices)
    n = max_over_ranks(len(slices), ids.device) if is_distributed() else len(slices)
    plan = [(s, 1.0) for s in slices] + [(filler, 0.0)] * (n - len(slices))  # zero-weighted repeats
    done = torch.zeros((), dtype=torch.float32, device=ids.device)
    for k, (inputs, weight) in enumerate(plan):
        loss = inputs_nll_sum(model, head, inputs, chunk_tokens) / denom
        if scale != 1.0 or weight != 1.0:
            loss = loss * (scale * weight)
        if k == len(plan) - 1:
            return loss + done
        if backward is not None:
            backward(loss)
        done = done + loss.detach()
    raise AssertionError("unreachable: a micro-batch has at least one row")
