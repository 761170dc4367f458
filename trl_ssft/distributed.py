"""Distributed helpers of SSFT: one all-reduce, one max-sync, the barrier, the parallelism check.

Every helper is a no-op in a single process. Collectives go through the process group's device
(CUDA tensors for NCCL, CPU tensors for gloo). The hot paths (matching pass, set loss) call the same
number of collectives on every rank: callers sync counts with `max_over_ranks` before a loop whose
length differs between ranks.
"""

from __future__ import annotations

from typing import Any

import torch


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def _collective_device(t: torch.Tensor) -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return t.device if t.device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` (any shape) over all processes, on `t`'s device (`t` itself when not distributed)."""
    if not is_distributed():
        return t
    dev = t.device
    x = t.to(_collective_device(t))
    torch.distributed.all_reduce(x)
    return x.to(dev)


def max_over_ranks(n: int, device: torch.device | str | None = None) -> int:
    """The largest `n` over all processes (`n` when not distributed). `device` is unused under gloo."""
    if not is_distributed():
        return n
    t = torch.tensor([n], dtype=torch.long)
    t = t.to(_collective_device(t) if device is None else (device if torch.distributed.get_backend() == "nccl"
                                                           else "cpu"))
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def barrier(trainer: Any) -> None:
    """Wait for every process of `trainer`'s accelerator (no-op with one process)."""
    acc = getattr(trainer, "accelerator", None)
    if acc is not None and acc.num_processes > 1:
        acc.wait_for_everyone()


def shutdown() -> None:
    """Destroy the process group (after a barrier) before the interpreter exits; no-op when none exists.

    Left to the interpreter's static destructors, gloo's worker threads can abort the process with
    "terminate called without an active exception" (exit -6) after a run that finished: seen with
    torch 2.13 in CI, on rank 1 of a two-process run. The CLIs and the test scripts call this last.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def check_parallelism(trainer: Any) -> None:
    """Refuse parallel layouts that break "one question per row" (raises `ValueError`).

    Data parallelism (DDP, FSDP, DeepSpeed ZeRO-1/2/3) and tensor parallelism work: the matching pass and
    the set loss make the same number of forward calls on every process. Context / sequence parallelism
    split one row across processes, so a scoring row and its cost are no longer whole on any process.
    """
    for pc in (getattr(getattr(trainer, "accelerator", None), "parallelism_config", None),
               getattr(trainer.args, "parallelism_config", None)):
        if pc is None:
            continue
        for attr in ("cp_size", "sp_size"):
            size = getattr(pc, attr, None)
            if size is not None and size > 1:
                raise ValueError(
                    f"SSFT does not support context/sequence parallelism ({attr}={size}): every process must "
                    "hold whole questions (prompt + all traces) to score and match them. Use data parallelism "
                    "(DDP/FSDP/ZeRO) with a smaller ssft_match_max_tokens instead."
                )
