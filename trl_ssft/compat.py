"""Workarounds for host-library behaviour that would silently break SSFT training."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def disable_bnb_cpu_inference_repack(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference. Returns #modules changed.

    bitsandbytes 0.50 `Linear4bit.forward` on a CPU with AVX512-BF16, in eval mode and without
    grad, converts its weight once and for all into a CPU "packed" layout. Later training forwards
    then take the packed path, which is not differentiable w.r.t. the input (and fails in place on
    a bias). The SSFT matching pass (and every evaluation) runs in eval mode without grad, so on
    such CPUs QLoRA training would break after the first step. Turning the repack off keeps the
    ordinary, differentiable 4-bit path.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    if changed:
        logger.info("disabled bitsandbytes CPU inference repacking on %d Linear4bit modules", changed)
    return changed
