# weightspace — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is pinned in the same pip command as everything else, so pip takes the CPU build on disk
# instead of pulling a multi-GB CUDA build; torch>=2.4 stays the library's lower bound.
TORCH ?= torch==2.13.0
DEMO_OUT ?= demo-out

.PHONY: install test lint format demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)" -e ".[test,baselines]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: install
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

test: install lint
	$(PY) -m pytest -q

demo: install
	$(PY) -m weightspace.demo --out $(DEMO_OUT)

bench: install
	$(PY) benchmarks/bench_graph.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
