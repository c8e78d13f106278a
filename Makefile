# Two commands for a fresh clone (see README): `make demo` and `make test`.
# Each sets up ./.venv first (a no-op when already set up).
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# a local copy of the TempoCNN graph (checksum-verified on copy); offline CI reads ../shared
SHARED_TEMPOCNN := $(abspath ../shared/models/tempocnn)
ifneq ($(wildcard $(SHARED_TEMPOCNN)/deeptemp-k16-3.pb),)
export STABLEBEAT_MODEL_MIRROR ?= $(SHARED_TEMPOCNN)
endif

.PHONY: setup demo test lint unit notebooks bench clean-runs fullsize colab-leg browser-test

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m stablebeat_utils run
	$(PY) tests/reading.py runs/demo

# lint, unit tests, then every notebook under nbval on the demo profile (a fresh run folder each time)
test: setup lint
	rm -rf notebooks/runs
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q --nbval-lax notebooks

# ruff: lint rules, width and what is formatted are in pyproject.toml ([tool.ruff]); `ruff format .` fixes the format
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

unit: setup
	$(PY) -m pytest -q tests

# CI's Colab legs: `make colab-leg RUNTIME=2026.01` (default: Python 3.12, torch 2.9.0) or RUNTIME=latest
# (Python 3.13, torch 2.11, TensorFlow): the launcher's set-up cell from a
# local clone, the launcher on demo end to end, in its own venv under .colab-leg/RUNTIME/ (colab/runtimes/)
RUNTIME ?= 2026.01
colab-leg:
	bash scripts/colab_leg.sh $(RUNTIME)

bench: setup
	$(PY) benchmarks/run_all.py

# the real SAO 1.0 architecture (random weights) on CPU: build, load, a LoRA step + export, engine
# reload, a sampler step, the padding weight; wall time and peak RSS per step (CI: <= 12 min, 16 GB)
fullsize: setup
	$(PY) scripts/fullsize.py

# 06 in JupyterLab with headless Chromium: an executed copy's players play, the playground renders,
# generates, plays and saves a take; screenshots in runs/browser-test/screenshots (after make test or demo)
browser-test: setup
	bash scripts/browser_setup.sh
	$(PY) scripts/browser_test.py

clean-runs:
	rm -rf runs notebooks/runs
