"""`scripts/gpu_check.sh --dry-run`: the GPU check's code on CPU with tiny configurations, so it cannot rot unseen.

Every check must pass or be skipped with a reason; those a CPU can run (the QLoRA step comparison through
benchmarks/memory_gpu.py, two attention implementations, Liger's patched forward, Axolotl's QKV/O LoRA kernels)
must pass.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.axolotl  # the dry run exercises Axolotl's LoRA kernels and Liger, which come with the axolotl extra
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), "--dry-run", "--out", str(out),
                           "--work-dir", str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert report["dry_run"] and list(checks) == ["qlora_7b", "attention", "packing", "fused_losses", "lora_kernels",
                                                  "offload", "vllm_parity", "gfpo_vllm_sync"]
    for name in ("qlora_7b", "attention", "packing", "fused_losses", "lora_kernels"):
        assert checks[name]["status"] == "pass", (name, checks[name].get("reason"))
    for name in ("offload", "vllm_parity", "gfpo_vllm_sync"):
        assert checks[name]["status"] == "skip" and checks[name]["reason"]
    assert checks["packing"]["fed_packed"] == checks["packing"]["tokens"] < checks["packing"]["fed_padded"]
    assert checks["fused_losses"]["liger_flce"]["loss_rel_diff"] == 0.0  # the patched forward changes nothing
    assert checks["qlora_7b"]["hungarian"]["trainable_params"] > checks["qlora_7b"]["sft"]["trainable_params"]
