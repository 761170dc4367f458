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

Evaluation streams instead (`stream_ids_vllm`): every sample is its own request with the seed the caller gives
(`eval.sampling.sample_seed`), all requests go to the engine at once, and each is handed back as soon as it
finishes (the engine's `add_request` / `step` loop), so the samples file grows while the engine runs.
``tensor_parallel_size`` goes to the engine; ``data_parallel_size`` > 1 runs that many engines in worker
processes (`trl_ssft.eval.vllm_workers`).

Engines: one `vllm.LLM` per (served model, engine options) is cached and reused by later calls
(`close_engines()` frees them; at most `MAX_ENGINES` are kept). Unless the caller has set them, the
engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``distributed_executor_backend="uni"``):
no spawned engine process (so no ``if __name__ == "__main__"`` guard is needed) and a start of a few
seconds on CPU instead of about a minute. Other defaults: ``dtype`` = the checkpoint's dtype (what HF
loads; vLLM's "auto" would downcast float32 to bfloat16/float16), and on CPU ``enforce_eager=True``
and a 1 GiB KV cache (vLLM's CPU default claims most of the machine's memory); any ``engine_kw``
overrides them (e.g. ``kv_cache_memory_bytes=8 << 30`` or ``max_model_len=4096`` for real models).

Adapters (a PEFT dir with ``adapter_config.json``) are served through vLLM's LoRA or merged first
(`trl_ssft.eval.vllm_adapters`: `adapter_plan`, `merge_adapter`, `resolve_model`).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence

from ..tokens import forbidding_logit_bias
from .vllm_adapters import (  # noqa: F401  (re-exported: the adapter routes)
    VLLM_LORA_RANKS, _lora_int_id, _read_json, _vocab_size, adapter_plan, merge_adapter, resolve_model)

logger = logging.getLogger(__name__)

MAX_ENGINES = 2
_ENGINES: OrderedDict = OrderedDict()  # key -> vllm.LLM
_CALLS = itertools.count()  # request-id prefixes of streamed calls (unique per process)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401

        return True
    except Exception:  # ImportError, or a broken torchvision/torchaudio next to a CPU torch
        return False


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


def engine_defaults(model_dir: str, engine_kw: dict) -> dict:
    """`engine_kw` for `vllm.LLM` with this library's defaults filled in (the checkpoint's dtype, ...)."""
    kw = dict(engine_kw)
    kw.setdefault("dtype", _checkpoint_dtype(model_dir))
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0" and int(kw.get("tensor_parallel_size") or 1) == 1:
        kw.setdefault("distributed_executor_backend", "uni")  # tensor parallelism needs vLLM's own executor
    if _on_cpu():
        kw.setdefault("enforce_eager", True)
        if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kw.setdefault("kv_cache_memory_bytes", 1 << 30)
    return kw


def get_engine(model_dir: str, **engine_kw):
    """The cached `vllm.LLM` for `model_dir` with these options (created on first use)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    kw = engine_defaults(model_dir, engine_kw)
    key = (os.path.abspath(model_dir), tuple(sorted((k, repr(v)) for k, v in kw.items())))
    if key in _ENGINES:
        _ENGINES.move_to_end(key)
        return _ENGINES[key]
    while len(_ENGINES) >= max(1, MAX_ENGINES):
        shutdown_engine(_ENGINES.popitem(last=False)[1])
    logger.info("starting vLLM engine for %s with %s", model_dir, kw)
    llm = LLM(model=model_dir, **kw)
    _ENGINES[key] = llm
    return llm


def shutdown_engine(llm) -> None:
    """Shut a `vllm.LLM` down (its engine core and distributed state), so another engine can start."""
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
        shutdown_engine(_ENGINES.popitem(last=False)[1])


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


def prompt_seeds(seed: int, count: int) -> list[int]:
    """The per-request seeds of a call: the first `count` draws of ``random.Random(seed)``."""
    rng = random.Random(seed)
    return [rng.getrandbits(31) for _ in range(count)]


def _serve(model_dir: str, prompts: list[list[int]], lora: str, engine_kw: dict):
    """(engine, LoRA request or None, stop ids) for `model_dir`; `ValueError` for ids outside the vocabulary."""
    if any(not p for p in prompts):
        raise ValueError("empty prompt")
    serve_dir, adapter, _route = resolve_model(model_dir, lora)
    lora_request = None
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        cfg = _read_json(os.path.join(adapter, "adapter_config.json"))
        ranks = [cfg.get("r", 8)] + [v for v in (cfg.get("rank_pattern") or {}).values() if isinstance(v, int)]
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
    return llm, lora_request, eos_ids(serve_dir, adapter)


def _params(stop: list[int], max_new_tokens: int, suppress_ids, greedy: bool, temperature: float, top_p: float,
            n: int, seed: int | None):
    from vllm import SamplingParams

    base = dict(max_tokens=max_new_tokens, stop_token_ids=stop, skip_special_tokens=False, detokenize=False)
    if suppress_ids:
        base["logit_bias"] = forbidding_logit_bias(suppress_ids)
    if greedy:
        return SamplingParams(n=1, temperature=0.0, **base)
    return SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=0, seed=seed, **base)


def _cut(token_ids, stop: set) -> list[int]:
    row = list(token_ids)
    return row[:next((k for k, t in enumerate(row) if t in stop), len(row))]


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
    `vllm_adapters.resolve_model`). ``greedy=True`` or ``temperature == 0`` decodes greedily (the n outputs of a
    prompt are then equal and computed once). Otherwise sampling with `temperature` and `top_p`
    (no top-k), seeded per prompt (`prompt_seeds`). `engine_kw` go to `vllm.LLM` (see the module doc
    for the defaults); the engine is cached across calls. `suppress_ids`: token ids given a logit bias of
    -100 (vLLM's limit), e.g. the forking tokens after the forking position.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm.inputs import TokensPrompt

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    prompts = [[int(t) for t in p] for p in prompts]
    if not prompts:
        return []
    llm, lora_request, stop = _serve(model_dir, prompts, lora, engine_kw)
    greedy = greedy or temperature == 0
    if greedy:
        params = [_params(stop, max_new_tokens, suppress_ids, True, 0.0, 1.0, 1, None)] * len(prompts)
    else:
        params = [_params(stop, max_new_tokens, suppress_ids, False, temperature, top_p, n, s)
                  for s in prompt_seeds(seed, len(prompts))]
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False,
                        lora_request=lora_request)
    result = []
    for o in outs:
        ids = [_cut(c.token_ids, set(stop)) for c in sorted(o.outputs, key=lambda c: c.index)]
        result.append([list(ids[0]) for _ in range(n)] if greedy else ids)
    return result


def stream_ids_vllm(model_dir: str, prompts: Sequence[Sequence[int]], *, seeds: Sequence[int],
                    on_done: Callable[[list[tuple[int, list[int]]]], None], temperature: float = 0.7,
                    top_p: float = 0.95, max_new_tokens: int = 256, greedy: bool = False, lora: str = "auto",
                    suppress_ids: Sequence[int] | None = None, data_parallel_size: int = 1,
                    **engine_kw) -> None:
    """One continuation of each prompt, prompt j sampled with its own seed ``seeds[j]``; ``on_done([(j, ids), ...])``
    is called as requests finish (the engine's step loop: `LLMEngine.add_request` / `step`), so a long evaluation
    keeps what it has when interrupted. `data_parallel_size` > 1 runs that many engines in processes of their own
    (`vllm_workers.stream_data_parallel`; each with ``tensor_parallel_size`` GPUs of its own). Other `engine_kw` go
    to `vllm.LLM` (e.g. ``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``)."""
    if data_parallel_size > 1:
        from .vllm_workers import stream_data_parallel

        stream_data_parallel(model_dir, prompts, seeds=seeds, on_done=on_done, data_parallel_size=data_parallel_size,
                             temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, greedy=greedy,
                             lora=lora, suppress_ids=suppress_ids, **engine_kw)
        return
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm.inputs import TokensPrompt

    prompts = [[int(t) for t in p] for p in prompts]
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds: {len(seeds)} for {len(prompts)} prompts")
    if not prompts:
        return
    llm, lora_request, stop = _serve(model_dir, prompts, lora, engine_kw)
    greedy, stop_set, engine = greedy or temperature == 0, set(stop), llm.llm_engine
    prefix = f"ssft-{os.getpid()}-{next(_CALLS)}-"
    for j, (p, sd) in enumerate(zip(prompts, seeds)):
        engine.add_request(prefix + str(j), TokensPrompt(prompt_token_ids=p),
                           _params(stop, max_new_tokens, suppress_ids, greedy, temperature, top_p, 1, int(sd)),
                           lora_request=lora_request)
    while engine.has_unfinished_requests():
        done = [(int(o.request_id[len(prefix):]), _cut(o.outputs[0].token_ids, stop_set))
                for o in engine.step() if o.finished and o.request_id.startswith(prefix)]
        if done:
            on_done(done)
