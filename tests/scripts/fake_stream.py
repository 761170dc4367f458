"""A stand-in for `vllm_backend.stream_ids_vllm` in data-parallel worker processes (tests/e2e/test_vllm_workers.py):
each prompt's "generation" is [its seed, the first GPU the worker sees, the worker's number of prompts]."""

from __future__ import annotations

import os


def stream(model_dir, prompts, *, seeds, on_done, **kwargs):
    if model_dir == "fail":
        raise RuntimeError("engine could not start")
    gpu = int((os.environ.get("CUDA_VISIBLE_DEVICES") or "-1").split(",")[0])
    for j in range(0, len(prompts), 2):  # two "requests" finish per step
        on_done([(k, [int(seeds[k]), gpu, len(prompts)]) for k in range(j, min(j + 2, len(prompts)))])
