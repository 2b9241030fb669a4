#!/usr/bin/env bash
# Medusa heads from scratch on one lent H100/H200 (bench/gpu_heads.py): self-distil the ShareGPT
# training split, train and evaluate the heads, write report.json + heads.tar.gz + distill.tar.gz.
#
#   bash bench/gpu_heads.sh OUT_DIR [MODEL_DIR [bench.gpu_heads flags...]]
#   e.g. bash bench/gpu_heads.sh "$OUT" .gpu_model --loss hard --steps 4000 --batch-size 1024 --proj-dtype bfloat16
#        bash bench/gpu_heads.sh "$OUT" .gpu_model --distilled results/gpu/nvidia-h200/distill_7730.tar.gz --layers 2 ...
#
# MODEL_DIR (default .gpu_model/) holds what the device calls carried: the GGUF parts, their manifest and the gguf wheel
# (`make gpu-parts`; see bench/gpu_model.sh) and the prompt pack prompts.jsonl.gz
# (`python -m bench.gpu_heads --pack-prompts`). The model folder is placed where medusa.backbone finds
# the short name smollm2-135m ($MEDUSA_CACHE/models/smollm2-135m), so every record names it as the
# CPU runs do. Python gets SIGINT after GPU_HEADS_LIMIT_S seconds (default 450: with the ~30 s
# conversion, 8 minutes), reports the phase it was in and bundles what finished; before that, stage 1
# stops taking steps in time to evaluate and bundle its heads (--time-limit-s); log.txt is the output.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bench/gpu_heads.sh OUT_DIR [MODEL_DIR [bench.gpu_heads flags...]]}"
MODEL_DIR="${2:-.gpu_model}"
PY="${PYTHON:-python3}"
LIMIT_S="${GPU_HEADS_LIMIT_S:-450}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

run() {
  local hf
  hf="$(bash bench/gpu_model.sh "$MODEL_DIR")" || return 3
  export MEDUSA_CACHE="$MODEL_DIR/cache"
  mkdir -p "$MEDUSA_CACHE/models" && ln -sfn "$(cd "$hf" && pwd)" "$MEDUSA_CACHE/models/smollm2-135m"
  timeout -s INT -k 30 "$LIMIT_S" "$PY" -m bench.gpu_heads --out "$OUT" --backbone smollm2-135m \
    --prompts-pack "$MODEL_DIR/prompts.jsonl.gz" --time-limit-s "$((LIMIT_S - 15))" "$@"
}

run "${@:3}" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
