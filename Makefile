# diffhep developer entry points. Every target creates .venv when it is missing.
# The interpreter is the newest of python3.13/3.12/3.11/python3 that actually runs
# (pyenv shims that cannot start are skipped).
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint format clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: no Python >= 3.11 found (tried python3.13, python3.12, python3.11, python3)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/diffhep demo

# the suite runs on TEST_WORKERS processes (pytest-xdist), whole test files per process.
# It is bound by XLA compilation (hundreds of small jitted functions, each run a few times):
# XLA's backend optimisation level 0 takes it from 633 s to 525 s on 2 cores (same commit,
# one run after the other; all 569 tests pass either way). XLA's CPU compiler spends most of
# the rest building an MLIR pass pipeline per fusion (perf); its older emitters
# (--xla_cpu_use_fusion_emitters=false) compile a fit 2.7x faster (6.2 -> 2.3 s of CPU, same
# CLs to every digit). Each worker runs on a core of its own (tests/affinity.py, from
# tests/conftest.py), where XLA's split of a program into modules compiled in parallel only
# adds work: one module (--xla_cpu_parallel_codegen_split_count=1) took test_hypotest and
# test_pipeline from 118 and 153 s to 112 and 129 s, test_fit and test_adversarial from 114 and
# 84 s to 106 and 83 s (2026-12-07, side by side on the two cores, then swapped).
# jaxlib aborts on a flag it does not know: each of TEST_PROBED_FLAGS is added only where a
# probe accepts it. TEST_XLA_FLAGS= runs at the default level; the slow sweep and the
# benchmarks always do.
TEST_WORKERS ?= 2
TEST_XLA_FLAGS ?= --xla_backend_optimization_level=0
TEST_PROBED_FLAGS ?= --xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1

test: $(STAMP)
	@flags="$(TEST_XLA_FLAGS)"; \
	for f in $(TEST_PROBED_FLAGS); do \
	  if XLA_FLAGS="$$f" $(BIN)/python -c "import jax; jax.devices()" >/dev/null 2>&1; then \
	    flags="$$flags $$f"; fi; done; \
	echo "XLA_FLAGS=$$flags $(XLA_FLAGS)"; \
	XLA_FLAGS="$$flags $(XLA_FLAGS)" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

bench: $(STAMP)
	$(BIN)/python benchmarks/hypotest.py
	$(BIN)/python benchmarks/structured_solve.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/apply_memory.py
	$(BIN)/python benchmarks/scaling.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
