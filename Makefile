# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv when it is
# missing (torch first, from pip, then detkit itself in editable mode).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-fast lint wheel-check bench

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed pyproject.toml
	$(PIP) install --quiet -e '.[dev,export]'
	touch $@

# Train the default model on the built-in dataset, evaluate it, draw detections on a val image.
demo: $(VENV)/.installed
	$(PY) tools/train.py
	$(PY) tools/eval.py
	$(PY) tools/infer.py $$($(PY) -m detkit.data.synthetic --val-image 0)

# No network, and no benchmark smoke runs: both are in `make bench` (the peer benchmark's
# installs Ultralytics; the others are a quarter of the suite's CPU time).
test: $(VENV)/.dev
	$(PY) -m pytest -q -n 2 -m "not network and not bench" --durations=10

# The fast subset: everything but the end-to-end and other slow tests.
test-fast: $(VENV)/.dev
	$(PY) -m pytest -q -n 2 -m "not slow and not network and not bench"

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The wheel built from this tree, installed (not editable) in a fresh venv, used from elsewhere.
wheel-check: $(VENV)/.dev
	.ci/wheel_check

# Every benchmark; each prints ratios against a reference measured in the same run. First the
# scripts' smoke runs, the peer benchmark's among them (installs Ultralytics into bench/.peer/:
# needs the network).
bench: $(VENV)/.dev
	$(PY) -m pytest -q -n 2 -m "network or bench" tests/test_bench.py
	for script in bench/bench_*.py; do $(PY) $$script || exit 1; done
