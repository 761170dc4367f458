"""The GPU check of issue 18: what a CPU cannot show about recipes users already have, in one run of at most
8 minutes on one H100, with no model hub (random weights on real configurations).

    bash scripts/gpu_check.sh                  # on the GPU machine (installs carried wheels, then runs this)
    python benchmarks/gpu_check.py --out gpu_check.json [--only qlora_7b,fused_losses]
    python benchmarks/gpu_check.py --dry-run   # CPU, tiny configurations: keeps the script from rotting (CI)

Checks (`benchmarks/gpu_check_cases.py`, one function each; each reports pass / fail / skip with the reason, and
the JSON is rewritten after every check so a timeout keeps what finished):

- ``qlora_7b``: QLoRA of Qwen2.5-7B's configuration (NF4, LoRA r 32, 6 forking tokens) on one question of M = 4
  traces of 8,192 tokens under a 24 GB cap (`torch.cuda.set_per_process_memory_fraction`): peak memory and step
  time next to TRL's SFTTrainer on one trace (`benchmarks/memory_gpu.py`'s cases, in subprocesses);
- ``attention``: flash-attention 2 against sdpa on the same weights: matching costs, assignments and set loss;
- ``packing``: the padding-free set loss through flash-attention's variable-length kernel against the padded sdpa
  rows: loss and gradients close, no padding fed, the time of each;
- ``fused_losses``: Liger (module kernels + fused linear cross-entropy; then its process-wide cross-entropy) and
  Cut Cross Entropy patched in: SSFT's costs and loss as without them, the fused loss never called, no higher peak;
- ``lora_kernels``: Axolotl's LoRA kernels (QKV, O, MLP) with the forking rows as PEFT trainable tokens: loss as
  without them, the rows change after a step;
- ``offload``: TRL's activation offloading around an SSFT step: same loss, peak memory;
- ``vllm_parity``: greedy vLLM generation after each forking token equals transformers' generation;
- ``gfpo_vllm_sync``: GFPO with TRL's vLLM colocate generation and TRL's own weight sync (no fallback).

NOT RUN in the session that wrote it (no GPU was lent to that task). --dry-run runs every check that a CPU can
run on tiny configurations (sdpa vs eager stands in for flash-attention 2; the QKV/O kernels only; Liger's fused
forward without its Triton kernels) and skips the rest with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

PASS, FAIL, SKIP = "pass", "fail", "skip"


class Context:
    """Where the checks run: `device` (cuda, or cpu with --dry-run), `dtype`, tiny or real shapes, a work dir."""

    def __init__(self, dry_run: bool, work_dir: str):
        import torch

        self.dry_run = dry_run
        self.cuda = torch.cuda.is_available() and not dry_run
        if not dry_run and not self.cuda:
            raise SystemExit("no CUDA device: run with --dry-run on a CPU")
        self.device = "cuda" if self.cuda else "cpu"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.work_dir = work_dir
        os.makedirs(work_dir, exist_ok=True)

    def small_arch(self) -> dict:
        """Qwen2.5-0.5B's shapes with 4 layers on a GPU; a tiny model on CPU."""
        if self.dry_run:
            return dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, vocab_size=600)
        return dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=4, num_attention_heads=14,
                    num_key_value_heads=2, vocab_size=151936)


def environment() -> dict:
    import torch

    versions = {}
    for m in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "liger_kernel",
              "cut_cross_entropy", "flash_attn", "vllm", "axolotl", "triton"):
        try:
            versions[m] = getattr(__import__(m), "__version__", "?")
        except Exception as e:  # noqa: BLE001  (a broken install is reported, not fatal)
            versions[m] = None if isinstance(e, ImportError) else f"error: {type(e).__name__}"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "gpu": gpu, "versions": versions}


def run_checks(names: list[str], ctx: Context, out_path: str, budget_s: float) -> dict:
    from gpu_check_cases import CHECKS, Skip

    report = {"dry_run": ctx.dry_run, "device": ctx.device, "environment": environment(), "checks": {}}
    t_start = time.time()
    for name in names:
        t0 = time.time()
        if t0 - t_start > budget_s:
            result = {"status": SKIP, "reason": f"time budget of {budget_s:.0f} s spent"}
        else:
            try:
                result = {"status": PASS, **(CHECKS[name](ctx) or {})}
            except Skip as e:
                result = {"status": SKIP, "reason": str(e)}
            except Exception as e:  # noqa: BLE001  (a failing check is a result, the others still run)
                result = {"status": FAIL, "reason": f"{type(e).__name__}: {e}"[:2000],
                          "traceback": traceback.format_exc()[-4000:]}
        result["seconds"] = round(time.time() - t0, 1)
        report["checks"][name] = result
        print(f"[gpu_check] {name}: {result['status']} ({result['seconds']} s)"
              + (f": {result.get('reason')}" if result["status"] != PASS else ""), flush=True)
        with open(out_path, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return report


def main(argv: list[str] | None = None) -> int:
    from gpu_check_cases import CHECKS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny configurations")
    p.add_argument("--only", default=",".join(CHECKS), help="comma-separated checks, in this order")
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--work-dir", default="/tmp/ssft_gpu_check")
    p.add_argument("--budget-s", type=float, default=450.0, help="checks not started by then are skipped")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        p.error(f"unknown checks {unknown}; known: {list(CHECKS)}")
    report = run_checks(names, Context(args.dry_run, args.work_dir), args.out, args.budget_s)
    statuses = [c["status"] for c in report["checks"].values()]
    print(f"[gpu_check] {statuses.count(PASS)} pass, {statuses.count(FAIL)} fail, {statuses.count(SKIP)} skip -> "
          f"{args.out}", flush=True)
    return 1 if FAIL in statuses else 0


if __name__ == "__main__":
    sys.exit(main())
