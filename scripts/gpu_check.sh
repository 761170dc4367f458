#!/usr/bin/env bash
# The GPU check of issue 18 (benchmarks/gpu_check.py: QLoRA of a 7B config at M=4 x 8k under a 24 GB cap next to
# TRL SFT, flash-attention 2 vs sdpa, Liger / CCE composition, LoRA kernels with forking-token rows, activation
# offloading, vLLM generation parity, GFPO with TRL's own vLLM weight sync). At most 8 minutes on one H100; no
# model hub (random weights on real configurations). Writes a JSON report (every check: pass / fail / skip + why).
#
#   bash scripts/gpu_check.sh --out "$OUT/gpu_check.json"   # on the GPU machine (--only a,b for a subset)
#   bash scripts/gpu_check.sh --dry-run [--out FILE]         # CPU, tiny configurations (CI: tests/e2e/test_gpu_check.py)
#   bash scripts/gpu_check.sh --fetch-wheels                 # here: download what the GPU machine lacks into .whl/
#
# The GPU machine (see /work/.library/device/) has torch, transformers, peft, accelerate, triton but no trl,
# datasets or bitsandbytes, and nothing can be fetched there. `--fetch-wheels` downloads WHEELS below (about 45 MB,
# under the 64 MiB the device tool carries); carry `.whl` with the run and this script installs it into /tmp/site
# first. Not carried (too large, or not on the package index): vllm (vllm_parity and gfpo_vllm_sync skip),
# flash-attn (attention skips), axolotl and its import chain (lora_kernels skips), Axolotl's fork of
# cut-cross-entropy (installed from git; fused_losses then checks Liger only).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="trl==1.16.0 datasets==4.8.4 dill==0.4.1 multiprocess==0.70.19 bitsandbytes==0.50.2 liger-kernel==0.8.1"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    exclude="$(git rev-parse --git-path info/exclude)"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $WHEELS
    du -sh .whl
    exit 0
fi

if compgen -G ".whl/*.whl" > /dev/null; then  # carried wheels (GPU machine)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_DISABLED=true
PY="${PYTHON:-python3}"
[[ -x .venv/bin/python && " $* " == *" --dry-run "* ]] && PY="${PYTHON:-.venv/bin/python}"
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
