#!/usr/bin/env bash
# The whole test suite, offline, CPU only, at both ends of the supported trl/transformers range:
#   1. everything (core, Axolotl plugin via the real `axolotl` CLI, inference, reliability,
#      2-process torchrun runs) on axolotl 0.19 / trl 1.9 / transformers 5.16;
#   2. the core and TRL-trainer tests again on trl 1.16 / transformers 5.23 / peft 0.21.
# Extra arguments go to both pytest runs (e.g. -x, -k name).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1 \
       WANDB_DISABLED=true TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
bash scripts/setup_env.sh oldest || exit 1
bash scripts/setup_env.sh newest || exit 1
export PATH="$PWD/.venv/bin:$PATH"   # the axolotl CLI execs accelerate from PATH
status=0
echo "=== [1/2] full suite: axolotl 0.19 / trl 1.9 / transformers 5.16 ==="
.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@" || status=1
echo "=== [2/2] core + TRL trainer: trl 1.16 / transformers 5.23 / peft 0.21 ==="
.venv-new/bin/python -m pytest -q -p no:cacheprovider tests -m "not axolotl" \
    --ignore=tests/e2e/test_axolotl_plugin.py "$@" || status=1
exit $status
