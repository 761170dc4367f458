#!/usr/bin/env bash
# The main job, on CPU, offline: build a tiny local model and the bundled multi-trace data, train
# it with SSFT through the real Axolotl CLI (plugin axolotl_ssft.SSFTPlugin, dataset type: ssft),
# then evaluate it on held-out questions at the paper's T = 0.7: one sample per forking token per round
# (the token x mode table and heat map, Pass@1 per token, Cons@N across the tokens), and the same model
# without forking tokens (Pass@1, Cons@N of N bare-prompt samples). Everything lands in demo_out/
# (override with DEMO_OUT=...); demo_out/demo_report.json holds every printed figure. It ends with the
# recorded (not recomputed) result of the accuracy-claim benchmark, one line per method.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1 \
       WANDB_DISABLED=true TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
bash scripts/setup_env.sh oldest
export PATH="$PWD/.venv/bin:$PATH"   # the axolotl CLI execs accelerate from PATH
OUT="${DEMO_OUT:-demo_out}"
rm -rf "$OUT"; mkdir -p "$OUT"
echo "== 1/3 building the tiny model and the bundled data in $OUT/assets"
.venv/bin/python -m trl_ssft.demo.assets "$OUT/assets" --family digitsum --train 512 --eval 64 2>"$OUT/assets.log"
sed -e "s#demo_assets/#$OUT/assets/#g" -e "s#outputs/ssft-tiny#$OUT/axolotl-ssft#g" \
    examples/yaml/axolotl_tiny_cpu.yaml > "$OUT/recipe.yaml"
echo "== 2/3 axolotl train $OUT/recipe.yaml (full log: $OUT/train.log; one line per logging step)"
set +e
.venv/bin/axolotl train "$OUT/recipe.yaml" 2>&1 | tee "$OUT/train.log" | .venv/bin/python -m trl_ssft.demo.progress
train_status=${PIPESTATUS[0]}
set -e
test "$train_status" -eq 0 || { echo "axolotl train failed (exit $train_status); see $OUT/train.log" >&2; exit 1; }
echo "== 3/3 evaluation on 64 held-out questions (T=0.7, top-p 0.95, 2 rounds), with and without forking tokens"
.venv/bin/python -m trl_ssft.demo.demo_eval "$OUT/axolotl-ssft" "$OUT/assets/eval.jsonl" --out "$OUT" \
    --mode-classifier digitsum --temperature 0.7 --rounds 2
echo "Report: $OUT/demo_report.json (summary + both evaluations), heat map: $OUT/eval_report.png, model: $OUT/axolotl-ssft"
echo
echo "== The paper's accuracy claim, SSFT vs SFT-mixed vs random tags from the same weights (pre-registered: docs/accuracy_claim.md)"
.venv/bin/python -m trl_ssft.demo.recorded docs/accuracy_claim_results.json
