"""Helpers for the Axolotl plugin tests: offline env, tiny assets, recipe builders, CLI runs in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "WANDB_DISABLED": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "CUDA_VISIBLE_DEVICES": "",
}

# The switches INTEGRATION.md lists for CPU runs (the fused LoRA kernels call CUDA-only code).
CPU_SWITCHES = {
    "bf16": False,
    "fp16": False,
    "tf32": False,
    "optimizer": "adamw_torch",
    "attn_implementation": "eager",
    "lora_qkv_kernel": False,
    "lora_o_kernel": False,
    "lora_mlp_kernel": False,
}


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def write_jsonl(path: Path, rows: list[dict]) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def base_recipe(model_dir: str, train: str, out: Path, **overrides) -> dict:
    """A small full fine-tuning SSFT recipe for the tiny CPU models."""
    cfg = {
        "base_model": model_dir,
        "plugins": ["axolotl_ssft.SSFTPlugin"],
        "datasets": [{"path": train, "ds_type": "json", "type": "ssft"}],
        "ssft_num_fork_tokens": 6,
        "ssft_match_tokens": 16,
        "sequence_len": 256,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "num_epochs": 50,
        "max_steps": 2,
        "learning_rate": 0.005,
        "lr_scheduler": "constant",
        "logging_steps": 1,
        "save_steps": 1,
        "seed": 42,
        "output_dir": str(out / "out"),
        "dataset_prepared_path": str(out / "prepared"),
        **CPU_SWITCHES,
    }
    cfg.update(overrides)
    return cfg


def write_yaml(path: Path, cfg: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return str(path)


def run_cli(cfg_path: str, *, timeout: int = 300, extra: tuple[str, ...] = (),
            env: dict | None = None) -> subprocess.CompletedProcess:
    """`axolotl train CFG` (the real console script, python launcher) in a subprocess; output captured.
    `env`: extra environment variables (e.g. PYTHONPATH for a reward module)."""
    axolotl = str(Path(sys.executable).parent / "axolotl")
    cmd = [axolotl, "train", cfg_path, "--launcher", "python", *extra]
    return subprocess.run(cmd, env={**subprocess_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def run_ok(cfg_path: str, timeout: int = 300, env: dict | None = None) -> str:
    proc = run_cli(cfg_path, timeout=timeout, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"axolotl train failed (rc={proc.returncode}):\n{out[-6000:]}"
    return out


def log_history(checkpoint: Path) -> list[dict]:
    with open(checkpoint / "trainer_state.json") as f:
        return json.load(f)["log_history"]


def ssft_state(path: Path) -> dict:
    with open(path / "ssft_state.json") as f:
        return json.load(f)
