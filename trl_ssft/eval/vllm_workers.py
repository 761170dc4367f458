"""Data-parallel vLLM generation for evaluation: K engines in processes of their own.

vLLM's offline `LLM` refuses ``data_parallel_size > 1`` in one process, so evaluation starts K worker processes
(``spawn``), each with its own engine on its own ``tensor_parallel_size`` GPUs (``CUDA_VISIBLE_DEVICES`` set before
vLLM is imported), gives worker r the prompts r, r + K, r + 2K, ... (interleaved, as the authors' lighteval
distributes requests over its Ray workers) and forwards each finished sample to the caller as it arrives. A
sample's seed travels with its prompt, so the samples are those of a one-engine run (up to floating-point
differences between batches).
"""

from __future__ import annotations

import importlib
import os
import queue as queue_mod
from collections.abc import Callable, Sequence


def shard_devices(workers: int, tensor_parallel_size: int = 1, visible: str | None = None) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` of each worker: consecutive groups of `tensor_parallel_size` of the visible GPUs
    (`visible`, default the environment's, else all); None for every worker when there is no GPU (CPU builds)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        try:
            import torch

            ids = [str(i) for i in range(torch.cuda.device_count())]
        except Exception:  # no CUDA torch
            ids = []
    if not ids:
        return [None] * workers
    need = workers * tensor_parallel_size
    if len(ids) < need:
        raise ValueError(f"data_parallel_size {workers} x tensor_parallel_size {tensor_parallel_size} needs {need} "
                         f"GPUs, {len(ids)} are visible ({','.join(ids)})")
    return [",".join(ids[r * tensor_parallel_size:(r + 1) * tensor_parallel_size]) for r in range(workers)]


def _worker(rank: int, devices: str | None, model_dir: str, items: list, kwargs: dict, out, stream: str) -> None:
    """One engine: generate `items` ([(global index, prompt, seed)]) and put finished samples on `out`."""
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        module, _, name = stream.partition(":")
        stream_ids = getattr(importlib.import_module(module), name)
        stream_ids(model_dir, [p for _, p, _ in items], seeds=[s for _, _, s in items],
                   on_done=lambda done: out.put(("done", [(items[j][0], ids) for j, ids in done])), **kwargs)
        out.put(("end", rank))
    except BaseException as e:  # reported to the parent, which raises
        out.put(("error", rank, f"{type(e).__name__}: {e}"))


def stream_data_parallel(model_dir: str, prompts: Sequence[Sequence[int]], *, seeds: Sequence[int],
                         on_done: Callable[[list[tuple[int, list[int]]]], None], data_parallel_size: int,
                         stream: str = "trl_ssft.eval.vllm_backend:stream_ids_vllm", **kwargs) -> None:
    """`vllm_backend.stream_ids_vllm` (`stream`: ``module:function`` run in each worker) over `data_parallel_size`
    engines in worker processes; `on_done` gets ``[(prompt index, new ids), ...]`` as workers finish samples. A
    worker that fails or dies raises `RuntimeError`."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    devices = shard_devices(data_parallel_size, int(kwargs.get("tensor_parallel_size") or 1))
    procs = []
    for r in range(data_parallel_size):
        items = [(j, [int(t) for t in prompts[j]], int(seeds[j])) for j in range(r, len(prompts), data_parallel_size)]
        if items:
            procs.append(ctx.Process(target=_worker, args=(r, devices[r], model_dir, items, kwargs, out, stream),
                                     daemon=True))
    for p in procs:
        p.start()
    ended = 0
    try:
        while ended < len(procs):
            try:
                msg = out.get(timeout=10)
            except queue_mod.Empty:
                dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                if dead:
                    raise RuntimeError(f"a vLLM data-parallel worker died (exit code {dead[0].exitcode})") from None
                continue
            if msg[0] == "done":
                on_done(msg[1])
            elif msg[0] == "end":
                ended += 1
            else:
                raise RuntimeError(f"vLLM data-parallel worker {msg[1]} failed: {msg[2]}")
    finally:
        for p in procs:
            if p.is_alive() and ended < len(procs):
                p.terminate()
            p.join(timeout=60)
