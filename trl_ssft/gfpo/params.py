"""Which parameters GFPO trains (`gfpo_trainable`): all / the adapter / only the forking-token rows of the output layer."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "base_model")


def _tied(model) -> bool:
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None:
        return True
    w_out = getattr(out, "weight", None)
    w_emb = getattr(emb, "weight", None)
    same = w_out is not None and w_emb is not None and w_out.data_ptr() == w_emb.data_ptr()
    return same or bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))


def expose_output_bias(model) -> bool:
    """Let trl >= 1.15's fused LM head score through PEFT's trainable forking-token rows of the output layer.

    TRL's GRPO scores completions with `add_fused_lm_head`, which reads ``lm_head.weight`` and ``lm_head.bias``.
    PEFT's ``TrainableTokensWrapper`` answers ``weight`` with the merged matrix (base rows with the active
    adapter's trained rows, differentiable in them) but has no ``bias`` attribute, so TRL crashed there. This gives
    the wrapper its base layer's ``bias`` as a plain attribute (not a registered parameter: the state dict and the
    optimizer do not change), so the fused head computes exactly the PEFT model's log-probabilities and the
    gradient reaches the trained rows (tests/unit/test_gfpo.py checks both). True when a wrapper was patched.
    """
    out = model.get_output_embeddings()
    if type(out).__name__ != "TrainableTokensWrapper" or "bias" in vars(out):
        return False
    object.__setattr__(out, "bias", getattr(out.token_adapter.base_layer, "bias", None))
    return True


def _mask_rows(param: torch.Tensor, rows: list[int]) -> None:
    """Zero the gradient of every row of `param` not in `rows` (so Adam leaves them exactly where they are)."""
    keep = torch.zeros(param.shape[0], 1, dtype=param.dtype, device=param.device)
    keep[torch.tensor(rows, dtype=torch.long, device=param.device)] = 1
    param.register_hook(lambda g: g * keep.to(g.dtype))


def _peft_output_rows(model, fork_ids: list[int]) -> list[torch.nn.Parameter]:
    """The trainable forking-token rows of a PEFT model's output layer (TrainableTokens deltas or a saved copy)."""
    out = model.get_output_embeddings()
    found, fork = [], set(fork_ids)
    for _, module in out.named_modules():
        deltas = getattr(module, "trainable_tokens_delta", None)
        if deltas is None or not hasattr(module, "token_indices"):
            continue
        for adapter, p in deltas.items():
            indices = list(module.token_indices[adapter])
            rows = [r for r, t in enumerate(indices) if t in fork]
            if sorted(indices[r] for r in rows) != sorted(fork_ids):
                continue
            p.requires_grad_(True)
            if len(rows) != len(indices):
                _mask_rows(p, rows)
            found.append(p)
    for name, p in out.named_parameters():
        if "modules_to_save" in name and name.endswith("weight"):
            p.requires_grad_(True)
            _mask_rows(p, fork_ids)
            found.append(p)
    return found


def apply_trainable(model, mode: str, fork_ids: list[int], weight_decay: float = 0.0) -> int:
    """Set `requires_grad` for `gfpo_trainable` = `mode`; returns the number of trainable parameter elements.

    ``all``: unchanged (a full model trains every weight, a PEFT model its adapter). ``adapter``: unchanged, but
    the model must be a PEFT model. ``fork_rows``: everything frozen except the forking-token rows of the output
    layer; the other rows' gradients are zeroed by a hook (so weight decay must be 0, else it would move them).
    """
    peft = is_peft_model(model)
    if mode == "adapter" and not peft:
        raise ValueError("gfpo_trainable='adapter' needs a PEFT (LoRA/QLoRA) model: pass a peft_config or a PeftModel, "
                         "or use gfpo_trainable='all'")
    if mode in ("all", "adapter"):
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    if mode != "fork_rows":
        raise ValueError(f"unknown gfpo_trainable {mode!r}")
    if weight_decay:
        raise ValueError(f"gfpo_trainable='fork_rows' needs weight_decay=0 (got {weight_decay}): decoupled weight "
                         "decay would move the frozen rows of the output layer")
    if _tied(model):
        raise ValueError("gfpo_trainable='fork_rows' needs an untied output layer: with tied embeddings the forking "
                         "tokens' output rows are their input embeddings, and training them would change what a "
                         "forced token does. Use gfpo_trainable='all' or 'adapter'")
    for p in model.parameters():
        p.requires_grad_(False)
    if peft:
        params = _peft_output_rows(model, fork_ids)
        if not params:
            raise ValueError("gfpo_trainable='fork_rows' with a PEFT model needs trainable forking-token rows in the "
                             "output layer (trainable_token_indices on lm_head, as an SSFT adapter of an untied model "
                             "has, or lm_head in modules_to_save)")
    else:
        w = model.get_output_embeddings().weight
        w.requires_grad_(True)
        _mask_rows(w, fork_ids)
        params = [w]
    n = sum(p.numel() for p in params)
    logger.info("GFPO trains only the forking-token rows of the output layer (%d parameter elements in %d tensors)",
                n, len(params))
    return n
