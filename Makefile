# Two commands on a fresh machine: `make demo` (main job on the shipped defaults, written to the git-ignored
# demo/) and `make test` (whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch/torchvision pins served from this machine's local wheel store; override for other platforms.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.equiaudit-installed

.PHONY: venv demo examples test bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/equiaudit scan zoo:gcnn-c4 --group so2 --steps 24 --limit 200 --out demo/demo.json --report demo/demo.html

# The example reports the README links to, regenerated from the shipped checkpoints into examples/ (tracked).
examples: venv
	$(BIN)/python -m equiaudit.reports.make_examples --out examples

test: venv
	$(BIN)/python -m pytest -n 2 -q

lint: venv
	$(BIN)/ruff check equiaudit cli zoo reports tests benchmarks

bench: venv
	$(BIN)/python benchmarks/bench_scan.py
	$(BIN)/python benchmarks/bench_layers.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo
