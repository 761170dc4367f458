"""The model's output projection, applied to slices of hidden states: logits never exist whole.

Both hot paths need next-token log-probabilities over the full vocabulary V at many positions: the
matching pass (no grad, N x M rows per question) and the set loss (grad, M rows). Building
``[rows, length, V]`` logits (plus their fp32 log-softmax and, with grad, their gradient) is what made
an SSFT step ~10x the memory of TRL's SFT step. Here the model's forward runs as usual, but its output
module is intercepted: it hands its input hidden states ``[rows, k, H]`` to a callback and returns a
``[rows, k, 1]`` placeholder. The callback projects at most `chunk_tokens` positions at a time through
the *real* output module (`OutputHead.project`), so:

- PEFT wrappers of the output layer apply (trainable forking-token rows on an untied ``lm_head``,
  LoRA on ``lm_head``, ``modules_to_save``), and tied weights are just the module's weight;
- the config's logit post-processing applies: soft-capping (``final_logit_softcapping``, Gemma 2/3),
  Granite's ``logits_scaling`` (divide) and Cohere's ``logit_scale`` (multiply);
- the callback runs *inside* the model's forward, so under FSDP the parameters are gathered then.

With grad (`chunked_nll_sum`) every chunk runs under activation checkpointing: its logits are freed
after the forward and rebuilt chunk by chunk in the backward (as TRL's ``chunked_nll`` does), so the
peak holds one chunk's logits, not ``rows x length``.

Sharded parameters in that backward (FSDP2): the recompute calls the output module's forward directly,
so its parameters must already be gathered. FSDP2 re-gathers a unit's parameters for the backward in a
hook on the unit's forward *outputs* (ZeRO-3 has the same design; not tested here); a placeholder
outside the graph never fires it, so with ``reshard_after_forward=True`` on the unit holding the output
layer (Accelerate and Axolotl pass it to the root too), or the output layer as its own unit, the
recompute met sharded ``DTensor`` weights ("aten.mm.default got mixed torch.Tensor and DTensor"). So
the callback may return its differentiable result: the placeholder is then a zero that depends on it
(`_ZeroLink`), the caller adds ``0 * logits`` to its loss (`zero_from`), and the backward reaches the
callback's result only through those outputs, after their hooks have gathered the parameters. Values
are unchanged (exact zeros). tests/e2e/test_fsdp.py runs both layouts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _text_config(model):
    cfg = getattr(model, "config", None)
    return cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg


class _ZeroLink(torch.autograd.Function):
    """Zeros of `shape` that depend on `x` in the graph (zero gradient to `x`); see the module docstring."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        return like.new_zeros(shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return torch.zeros(ctx.x_shape, dtype=ctx.x_dtype, device=grad.device), None, None


def zero_from(logits: torch.Tensor | None) -> torch.Tensor | float:
    """``0 * logits.sum()``: a zero that puts the model's output (and the hooks on it) on the backward path."""
    if logits is None or not logits.requires_grad:
        return 0.0
    return (logits * 0).sum().float()


class OutputHead:
    """The output module of `model` (a `PreTrainedModel`, or a `PeftModel` around one).

    Attributes: ``module`` (``model.get_output_embeddings()``, PEFT wrapper included), ``softcap``,
    ``scale`` (multiplier applied after the projection, 1.0 when none).
    """

    def __init__(self, model: torch.nn.Module):
        module = model.get_output_embeddings()
        if module is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings: SSFT needs a causal LM head")
        self.module = module
        self._forward = module.forward  # the original forward (with any instance-level hooks, e.g. accelerate)
        cfg = _text_config(model)
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        scale = 1.0
        if getattr(cfg, "logits_scaling", None):  # Granite: logits / logits_scaling
            scale /= float(cfg.logits_scaling)
        if getattr(cfg, "model_type", "").startswith("cohere") and getattr(cfg, "logit_scale", None):
            scale *= float(cfg.logit_scale)  # Cohere: logits * logit_scale
        self.scale = scale

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of `hidden` [..., H] -> [..., V], exactly as the model's forward computes them."""
        logits = self._forward(hidden)
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @contextlib.contextmanager
    def intercept(self, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
        """While active, the output module calls ``fn(hidden [rows, k, H])`` and returns a [rows, k, 1] placeholder.

        When `fn` returns a tensor that requires grad, the placeholder (zeros) depends on it: add
        ``zero_from(outputs.logits)`` to the loss so the backward passes through the model's outputs.
        """
        module = self.module
        had_own = "forward" in module.__dict__
        saved = module.__dict__.get("forward")

        def forward(hidden, *args, **kwargs):
            result = fn(hidden)
            shape = hidden.shape[:-1] + (1,)
            if isinstance(result, torch.Tensor) and result.requires_grad:
                return _ZeroLink.apply(result, hidden, shape)
            return hidden.new_zeros(shape)

        module.forward = forward
        try:
            yield
        finally:
            if had_own:
                module.forward = saved
            else:
                del module.forward


def _nll_sum(head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head.project(hidden).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_nll_sum(head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """Sum of -log p(target) over positions, differentiable, with at most `chunk_tokens` positions' logits alive.

    hidden [T, H] (the positions that carry a target), targets [T] (ids; -100 is skipped). Each chunk's
    logits are recomputed in the backward (activation checkpointing), so the forward keeps none.
    """
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, hidden.shape[0], chunk_tokens):
        h, y = hidden[s: s + chunk_tokens], targets[s: s + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(_nll_sum, head, h, y, use_reentrant=False)
        else:
            total = total + _nll_sum(head, h, y)
    return total


@torch.no_grad()
def row_nll_sums(head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """Per-row sum of -log p(target), float64 [rows], no grad, at most `chunk_tokens` positions projected at once.

    hidden [rows, k, H], targets [rows, k] (-100: not scored; those positions are never projected).
    """
    rows = hidden.shape[0]
    sel = targets != IGNORE_INDEX
    row_of = torch.arange(rows, device=targets.device)[:, None].expand_as(targets)[sel]
    h, y = hidden[sel], targets[sel]
    out = torch.zeros(rows, dtype=torch.float64, device=hidden.device)
    for s in range(0, h.shape[0], chunk_tokens):
        logits = head.project(h[s: s + chunk_tokens]).float()
        nll = F.cross_entropy(logits, y[s: s + chunk_tokens], reduction="none")
        out.index_add_(0, row_of[s: s + chunk_tokens].to(out.device), nll.double())
    return out


def shifted_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, targets) of next-token prediction: `labels` [rows, S] -> bool mask [rows, S], ids [T].

    Position t predicts labels[:, t + 1]; the mask marks positions whose next label is not -100
    (the last position never predicts). ``hidden[mask]`` lines up with the returned targets.
    """
    nxt = torch.full_like(labels, IGNORE_INDEX)
    nxt[:, :-1] = labels[:, 1:]
    mask = nxt != IGNORE_INDEX
    return mask, nxt[mask]
