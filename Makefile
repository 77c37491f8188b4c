# losskit: two commands do all set-up on a fresh machine with Python 3.10+ and make.
#   make demo   create .venv, install losskit with the demo extras, run the tour (main job)
#   make test   create .venv, install the test dependencies, run the whole suite
#
# torch is pinned for the venv: a plain `torch` requirement would pull a multi-GB CUDA build,
# while torch==2.13.0 takes the CPU build. The library itself only requires torch>=2.4.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: demo test lint bench-ce bench-lce clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(PIP) $(TORCH)
	touch $@

$(VENV)/.demo: pyproject.toml $(VENV)/.torch
	$(PIP) -e '.[demo]'
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.torch
	$(PIP) -e '.[test,triton,demo]'
	touch $@

demo: $(VENV)/.demo
	$(BIN)/python -m losskit tour --plot tour-plots

# TRITON_INTERPRET=1 runs the Triton kernels on the CPU in Triton's interpreter (set before the
# kernels are defined); that is how the suite tests them without a GPU. The whole suite runs in
# file order; then the fused-path tests run again with torch's CPU kernels at another SIMD width
# (ATEN_CPU_CAPABILITY=default: no vector instructions; torch's float32 rounding, which the
# fused paths are budgeted against, changes with it) and in a shuffled order (pytest-randomly,
# a fixed seed: any order must pass, and this one reproduces).
FUSED_TESTS := tests/kernels tests/functional/test_linear_cross_entropy.py tests/functional/test_preference.py \
	tests/functional/test_linear_cross_entropy_torch.py tests/distributed
test: $(VENV)/.test
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -n 2 --durations=15 -q -p no:randomly
	ATEN_CPU_CAPABILITY=default TRITON_INTERPRET=1 \
		$(BIN)/python -m pytest -n 2 -q -p randomly --randomly-seed=1 $(FUSED_TESTS)

lint: $(VENV)/.test
	$(PIP) ruff
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

bench-ce: $(VENV)/.test
	$(BIN)/python -m losskit bench ce

bench-lce: $(VENV)/.test
	$(BIN)/python -m losskit bench lce

clean:
	rm -rf $(VENV) tour-plots bench-out .pytest_cache
