# weightspace — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is pinned in the same pip command as everything else, so pip takes the CPU build on disk
# instead of pulling a multi-GB CUDA build; torch>=2.4 stays the library's lower bound.
TORCH ?= torch==2.13.0
DEMO_OUT ?= demo-out

.PHONY: install test lint format demo bench bench-full clean

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

# A longer run than the demo's time budget allows: one full encoder training (12 epochs, about
# 10 minutes on 2 cores) on the demo zoo, then every method over 3 seeds on its held-out runs.
bench-full: install
	test -d $(DEMO_OUT)/zoo || $(PY) -m weightspace zoo generate --preset small --out $(DEMO_OUT)/zoo
	$(PY) -m weightspace train --zoo $(DEMO_OUT)/zoo --out $(DEMO_OUT)/encoder-full --epochs 12
	$(PY) -m weightspace bench --zoo $(DEMO_OUT)/zoo --encoder $(DEMO_OUT)/encoder-full \
		--out $(DEMO_OUT)/bench-full --seeds 3 --held-out "" --no-synthesis

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
