# Two commands on a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned to the CPU wheel (override: make demo TORCH=torch), so that pip never
# resolves a bare `torch` requirement to a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fsd-installed

.PHONY: demo test test-all lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fsd demo --workdir demo

# lint: the whole repo (tests and benchmarks too) is ruff-clean and keeps the import contracts in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf demo .pytest_cache build *.egg-info
