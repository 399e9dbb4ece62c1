# Every target creates .venv and installs jaxsafe into it first, so a machine with only Python and pip suffices.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache

.PHONY: install demo test test-fast bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/jaxsafe demo --out runs/demo-$$(date +%Y%m%d-%H%M%S)

# Two workers (one per core); each test file runs whole on one worker so module fixtures compile once.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

# The API reference from the docstrings (pdoc) in build/docs/ (open build/docs/index.html); any pdoc warning fails.
docs: $(STAMP)
	rm -rf build/docs
	$(BIN)/python scripts/docs.py build/docs

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache runs
