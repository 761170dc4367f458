"""The continuation anchor (`gfpo_anchor_coef`): the frozen starting model it pulls toward, and its loss.

The reference is the model GFPO started from, scored on each rollout's continuation (the tokens after the
forking token). Which object plays it (`anchor_reference`):

- a full model: TRL's reference model when it has one (``beta > 0``), else a frozen copy (one more model in
  memory per process; under FSDP / DeepSpeed a plain copy is refused, TRL's sharded reference is needed);
- a PEFT model whose adapter is still the identity (a fresh LoRA on a full SSFT model: every ``lora_B`` zero,
  trainable-token rows equal to the base rows, ``modules_to_save`` equal to the originals): the same model with
  its adapter disabled (PEFT ``disable_adapter()``), no copy;
- a PEFT model continuing a trained adapter (an SSFT LoRA / QLoRA adapter): a frozen copy of the starting
  adapter as a second PEFT adapter, ``gfpo_ref`` (its LoRA matrices and its trainable forking-token rows), made
  active while the reference log-probs are computed. It costs one more adapter's parameters, no model copy.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager

import torch

from .params import is_peft_model

logger = logging.getLogger(__name__)

REF_ADAPTER = "gfpo_ref"


def _renamed(name: str, src: str, dst: str) -> str:
    return ".".join(dst if part == src else part for part in name.split("."))


def adapter_is_identity(model, adapter: str) -> bool:
    """True when PEFT adapter `adapter` of `model` does not change the model's function yet: every LoRA ``B``
    matrix is zero, every trainable-token row equals its base row, every ``modules_to_save`` copy equals its
    original. Anything else (DoRA magnitudes, other tuner types, trained values) counts as not the identity."""
    for module in model.modules():
        for attr in ("lora_B", "lora_embedding_B"):
            store = getattr(module, attr, None)
            if store is not None and adapter in store:
                w = store[adapter].weight if hasattr(store[adapter], "weight") else store[adapter]
                if torch.count_nonzero(w.detach()) > 0:
                    return False
        mag = getattr(module, "lora_magnitude_vector", None)
        if mag is not None and adapter in mag:
            return False
        deltas = getattr(module, "trainable_tokens_delta", None)
        if deltas is not None and adapter in deltas:
            original = module.trainable_tokens_original[adapter].to(deltas[adapter])
            if not torch.equal(deltas[adapter].detach(), original):
                return False
        saved = getattr(module, "modules_to_save", None)
        if saved is not None and adapter in saved and hasattr(module, "original_module"):
            ref = dict(module.original_module.named_parameters())
            if any(not torch.equal(p.detach(), ref[n].detach().to(p)) for n, p in saved[adapter].named_parameters()):
                return False
    known = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "trainable_tokens_delta", "modules_to_save")
    return all(any(k in n for k in known) for n, _ in model.named_parameters() if adapter in n.split("."))


def copy_adapter(model, src: str, dst: str) -> int:
    """Add PEFT adapter `dst` as a frozen copy of adapter `src` (LoRA matrices, trainable-token rows, saved
    modules); returns the number of copied parameter elements. The active adapter stays `src`."""
    config = model.peft_config[src]
    if getattr(config, "target_parameters", None):
        raise ValueError("gfpo_anchor_coef: this adapter uses LoRA `target_parameters`, and PEFT allows no second "
                         "adapter next to it (peft#3340), so there is no frozen copy to anchor to: merge the adapter "
                         "into the model first, or set gfpo_anchor_coef 0")
    if dst not in model.peft_config:
        flags = [(p, p.requires_grad) for p in model.parameters()]
        model.add_adapter(dst, copy.deepcopy(config))  # PEFT marks the active adapter trainable again: restore
        for p, flag in flags:
            p.requires_grad_(flag)
    params = dict(model.named_parameters())
    copied, n = set(), 0
    with torch.no_grad():
        for name, p in params.items():
            if src in name.split("."):
                target = _renamed(name, src, dst)
                params[target].data = p.detach().clone()  # same dtype too (TRL casts QLoRA adapters to bf16)
                copied.add(target)
                n += p.numel()
    missing = [name for name in params if dst in name.split(".") and name not in copied]
    if missing:
        raise RuntimeError(f"GFPO anchor: adapter {dst!r} has parameters with no counterpart in {src!r}: {missing[:3]}")
    for name in copied:
        params[name].requires_grad_(False)
    return n


@contextmanager
def dropout_off(model):
    """Dropout layers of `model` in eval mode for the duration, nothing else: `model.eval()` would also switch
    bitsandbytes' 4-bit layers, which on CPUs with AVX512-BF16 then repack their weights for inference for good
    (bitsandbytes 0.50 `Linear4bit.forward`), and later training forwards take a path without input gradients."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.training]
    for m in layers:
        m.eval()
    try:
        yield
    finally:
        for m in layers:
            m.train()


class Reference:
    """The anchor's starting model: ``kind`` is ``copy`` / ``trl_ref`` (a separate frozen model), ``adapter_off``
    (the PEFT model with its adapter disabled) or ``adapter_copy`` (the PEFT model with `REF_ADAPTER` active)."""

    def __init__(self, kind: str, model=None, detail: str = ""):
        self.kind, self.model, self.detail = kind, model, detail

    @contextmanager
    def scoring(self, trainer):
        """Yield the module to score the reference with; a PEFT model is switched for the duration (dropout off,
        adapter disabled or `REF_ADAPTER` active) and restored after, with every `requires_grad` flag as it was
        (PEFT's `set_adapter` marks the active adapter trainable)."""
        if self.kind in ("copy", "trl_ref"):
            yield self.model
            return
        peft = trainer.accelerator.unwrap_model(trainer.model)
        flags = [(p, p.requires_grad) for p in peft.parameters()]
        active = peft.active_adapter
        try:
            with dropout_off(peft):
                if self.kind == "adapter_off":
                    with peft.disable_adapter():
                        yield trainer.model
                else:
                    peft.set_adapter(REF_ADAPTER)
                    try:
                        yield trainer.model
                    finally:
                        peft.set_adapter(active)
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    def describe(self) -> str:
        return {"copy": "a frozen copy of the starting model",
                "trl_ref": "TRL's reference model (beta > 0)",
                "adapter_off": "the starting model = this model with its (still identity) adapter disabled, no copy",
                "adapter_copy": f"a frozen copy of the starting adapter as PEFT adapter {REF_ADAPTER!r}"}[self.kind] + (
            f" ({self.detail})" if self.detail else "")


def anchor_reference(trainer) -> Reference:
    """The frozen starting model that `gfpo_anchor_coef` pulls the continuations back to (see the module doc)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if is_peft_model(model):
        active = model.active_adapter
        if adapter_is_identity(model, active):
            return Reference("adapter_off")
        n = copy_adapter(model, active, REF_ADAPTER)
        return Reference("adapter_copy", detail=f"{n:,} parameter elements")
    if getattr(trainer, "ref_model", None) is not None:
        return Reference("trl_ref", trainer.ref_model)
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        raise ValueError("gfpo_anchor_coef under FSDP / DeepSpeed needs beta > 0, so that TRL builds and shards the "
                         "reference model (a plain copy of a sharded model would be neither whole nor sharded); or "
                         "set gfpo_anchor_coef 0")
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return Reference("copy", ref, detail=f"{sum(p.numel() for p in ref.parameters()):,} parameters")


def drop_saved_reference(output_dir: str) -> None:
    """PEFT's `save_pretrained` writes every adapter, the frozen reference too (as `output_dir/gfpo_ref/`): remove
    it, so a saved GFPO adapter dir holds only the trained adapter (a resumed run copies its start again)."""
    import os
    import shutil

    ref_dir = os.path.join(output_dir, REF_ADAPTER)
    if os.path.exists(os.path.join(ref_dir, "adapter_config.json")):
        shutil.rmtree(ref_dir)


def repair_trl_ref_adapter(model) -> bool:
    """TRL (beta > 0, a PeftModel given to the trainer) copies the ``default`` adapter into a ``ref`` adapter by the
    name pattern ``.default.``, which misses the trainable-token rows (``...trainable_tokens_delta.default``): its
    reference would score the forking tokens with their base rows. Copy every parameter again; True if done."""
    if not is_peft_model(model) or "ref" not in model.peft_config or "default" not in model.peft_config:
        return False
    copy_adapter(model, "default", "ref")
    return True


# ------------------------------------------------------------------ the continuations and the loss
def continuation_tensors(conts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask [B, max(1, longest)] of the rollouts' continuations."""
    width = max(1, max((len(c) for c in conts), default=0))
    ids = torch.full((len(conts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(conts), width), dtype=torch.long, device=device)
    for i, c in enumerate(conts):
        ids[i, :len(c)] = torch.tensor(c, dtype=torch.long, device=device)
        mask[i, :len(c)] = 1
    return ids, mask


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """TRL's k3 estimate of KL(policy || reference) per token, mean over the `mask`ed tokens ([B, L] inputs)."""
    delta = ref_logp - logp
    kl = torch.exp(delta) - delta - 1
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1.0)
