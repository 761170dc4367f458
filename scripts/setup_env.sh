#!/usr/bin/env bash
# Create (or reuse) a virtual environment with everything the project needs. Offline-safe after
# the first run; needs only the Python package index.
#
#   scripts/setup_env.sh          -> .venv      axolotl 0.19 + trl 1.9 + transformers 5.16 (oldest supported end)
#   scripts/setup_env.sh newest   -> .venv-new  trl 1.16 + transformers 5.23 + peft 0.21 (newest supported end)
#
# torch is pinned to 2.13.0 (CPU build where the index offers one). A stamp file records what was
# installed; the environment is rebuilt when pyproject.toml or this script changes.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-oldest}"
PY="${PYTHON:-python3}"
case "$flavour" in
  oldest) venv=.venv;     pins=("axolotl==0.19.0");            extras=".[dev,eval,axolotl]" ;;
  newest) venv=.venv-new; pins=("trl==1.16.0" "transformers==5.23.0" "peft==0.21.2"); extras=".[dev,eval]" ;;
  *) echo "usage: $0 [oldest|newest]" >&2; exit 2 ;;
esac
stamp="$venv/.ssft-stamp"
want="$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)-$flavour"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "[setup] creating $venv ($flavour end of the supported range); this takes a few minutes the first time" >&2
"$PY" -m venv "$venv"
pipq() { "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
pipq "torch==2.13.0"
pipq "${pins[@]}" -e "$extras" "torch==2.13.0"
"$venv/bin/python" - <<'PY'
import importlib, sys
for mod in ("torch", "trl", "transformers", "peft", "scipy", "bitsandbytes", "trl_ssft", "pytest", "hypothesis"):
    importlib.import_module(mod)
import torch, trl, transformers, peft
print(f"[setup] torch {torch.__version__}, trl {trl.__version__}, transformers {transformers.__version__}, peft {peft.__version__}", file=sys.stderr)
PY
echo "$want" > "$stamp"
