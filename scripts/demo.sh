#!/usr/bin/env bash
# The main job, on CPU, offline: build a tiny local model and the bundled multi-trace data, train
# it with SSFT through the real Axolotl CLI (plugin axolotl_ssft.SSFTPlugin, dataset type: ssft),
# then evaluate it: one sample per forking token on held-out questions, the token x mode table,
# Pass@1, Cons@N. Everything lands in demo_out/ (override with DEMO_OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1 \
       WANDB_DISABLED=true TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
bash scripts/setup_env.sh oldest
export PATH="$PWD/.venv/bin:$PATH"   # the axolotl CLI execs accelerate from PATH
OUT="${DEMO_OUT:-demo_out}"
rm -rf "$OUT"; mkdir -p "$OUT"
echo "== 1/3 building the tiny model and the bundled data in $OUT/assets"
.venv/bin/python -m trl_ssft.demo.assets "$OUT/assets" --train 512 --eval 32 2>"$OUT/assets.log"
sed -e "s#demo_assets/#$OUT/assets/#g" -e "s#outputs/ssft-tiny#$OUT/axolotl-ssft#g" \
    examples/yaml/axolotl_tiny_cpu.yaml > "$OUT/recipe.yaml"
echo "== 2/3 axolotl train $OUT/recipe.yaml (log: $OUT/train.log)"
set +e
.venv/bin/axolotl train "$OUT/recipe.yaml" 2>&1 | tee "$OUT/train.log" | stdbuf -oL tr '\r' '\n' \
    | grep --line-buffered -E "^ *\{'(loss|eval_loss)'|^SSFT|Error" | sed -u -E "s/, 'memory[^,]*//g; s/^ +//"
train_status=${PIPESTATUS[0]}
set -e
test "$train_status" -eq 0 || { echo "axolotl train failed (exit $train_status); see $OUT/train.log" >&2; exit 1; }
echo "== 3/3 evaluation on held-out questions (sampling at temperature 1.0)"
.venv/bin/trl-ssft eval "$OUT/axolotl-ssft" "$OUT/assets/eval.jsonl" --mode-classifier synthetic \
    --temperature 1.0 --rounds 2 --max-new-tokens 64 --output "$OUT/eval_report.json"
echo "Report: $OUT/eval_report.json, heat map: $OUT/eval_report.png, model: $OUT/axolotl-ssft"
