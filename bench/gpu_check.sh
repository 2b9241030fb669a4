#!/usr/bin/env bash
# GPU check for one lent H100/H200 (no network, <= 64 MiB of working tree per call).
#
#   bench/gpu_check.sh OUT_DIR [MODEL_DIR [bench.gpu_check flags...]]
#   e.g. bench/gpu_check.sh out .gpu_model --phases speed --tree results/trees/optuna_nvidia-h200.json
#
# MODEL_DIR (optional, default .gpu_model/) may hold SmolLM2 as a HF folder (config.json +
# model.safetensors), or what bench/gpu_model.sh turns into one: the GGUF or its parts and manifest
# (`make gpu-parts`; one part per device call while the machine stays warm) and the gguf wheel.
# GPU_CHECK_LIMIT_S (default 470) bounds the Python run. Without a model it falls back to random weights and says so in OUT_DIR/report.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bench/gpu_check.sh OUT_DIR [MODEL_DIR]}"
MODEL_DIR="${2:-.gpu_model}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
ARGS=(--out "$OUT")
if [ -f "$MODEL_DIR/config.json" ]; then
  ARGS+=(--model-dir "$MODEL_DIR")
elif [ -f "$MODEL_DIR/hf/config.json" ] || compgen -G "$MODEL_DIR/*.gguf*" > /dev/null; then
  if HF_DIR="$(bash bench/gpu_model.sh "$MODEL_DIR")"; then ARGS+=(--model-dir "$HF_DIR")
  else echo "no usable model in $MODEL_DIR: falling back to random weights" >&2; fi
fi
ARGS+=("${@:3}")
timeout "${GPU_CHECK_LIMIT_S:-470}" "$PY" -m bench.gpu_check "${ARGS[@]}" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
