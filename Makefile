# Two commands on a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned to the CPU wheel (override: make demo TORCH=torch), so that pip never
# resolves a bare `torch` requirement to a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fsd-installed

.PHONY: demo test test-all lint setup clean gpu-wheels

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

# gpu-wheels: what the lent GPU machine (CPython 3.12, torch with CUDA, no network) lacks, as wheels in the
# ignored .whl/ that travel with the working tree (64 MiB at most); python -m benchmarks.gpu_check installs them
# there. --no-deps: the machine has numpy, torch and their dependencies already. faiss: faiss-cpu (18 MiB; 24 MiB in
# all); FAISS_WHEEL=faiss-gpu-cu12 (46 MiB, 52 MiB in all, no faiss-cpu) fits too but loads CUDA libraries from
# the nvidia-* wheels torch brought, so it is not the default.
FAISS_WHEEL ?= faiss-cpu
GPU_WHEELS := zarr numcodecs donfig crc32c dask distributed cloudpickle partd locket toolz msgpack psutil \
	sortedcontainers tblib tornado zict $(FAISS_WHEEL) pytest pluggy iniconfig

gpu-wheels:
	mkdir -p .whl
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
		--dest .whl $(GPU_WHEELS)
	du -sh .whl

clean:
	rm -rf demo .pytest_cache build *.egg-info
