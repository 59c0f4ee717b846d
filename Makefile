# weightspace — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is pinned in the same pip command as everything else, so pip takes the CPU build on disk
# instead of pulling a multi-GB CUDA build; torch>=2.4 stays the library's lower bound.
TORCH ?= torch==2.13.0
DEMO_OUT ?= demo-out

.PHONY: install test lint format demo bench bench-full pretrained clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)" -e ".[bench,baselines]"
	touch $@

# The test suite also exercises the engines beyond one machine (a local Ray, a real PostgreSQL +
# pgvector server started by pgserver): their extras install only for `make test`, not the demo.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q "$(TORCH)" -e ".[test,serve,bench,baselines,distributed,pgvector,hub]"
	touch $@

install: $(VENV)/.installed

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff format src tests benchmarks examples
	$(VENV)/bin/ruff check --fix src tests benchmarks examples

test: $(VENV)/.installed-test lint
	$(PY) -m pytest -q

demo: install
	$(PY) -m weightspace.demo --out $(DEMO_OUT)

bench: install
	$(PY) benchmarks/bench_graph.py

# The full benchmark, without the demo's budget: 3 encoder seeds trained for 12 epochs each
# (about 8 minutes each on 2 cores), every method over them (rows: mean ± std over the 3
# seeds), NFN at its reference budget (about 23 CPU-minutes per seed on this zoo), synthesis;
# then the held-out architecture and task protocols, which train their own 12-epoch encoders
# on their splits. Every training is bounded by epochs or steps, so figures do not move with load.
# Estimated 2.5-3 hours on 2 cores (each bench seed is about 20 CPU-minutes plus NFN's 23).
FULL_SEEDS ?= 0 1 2
FULL_EPOCHS ?= 12
FULL_ENCODERS := $(foreach s,$(FULL_SEEDS),$(DEMO_OUT)/encoders-full/seed-$(s))
bench-full: install
	$(PY) -m weightspace zoo generate --preset small --out $(DEMO_OUT)/zoo  # resumes; no-op when done
	set -e; for seed in $(FULL_SEEDS); do \
		$(PY) -m weightspace train --zoo $(DEMO_OUT)/zoo --epochs $(FULL_EPOCHS) --seed $$seed \
			--out $(DEMO_OUT)/encoders-full/seed-$$seed; \
	done
	$(PY) -m weightspace bench --zoo $(DEMO_OUT)/zoo --out $(DEMO_OUT)/bench-full \
		$(foreach e,$(FULL_ENCODERS),--encoder $(e)) --held-out "" --decoder-time-limit 0
	$(PY) -m weightspace bench --zoo $(DEMO_OUT)/zoo --out $(DEMO_OUT)/bench-full \
		--only held-out --held-out-epochs $(FULL_EPOCHS)

# The encoder bundled in the package (`weightspace.from_pretrained("small")`, `--encoder
# pretrained:small`): the demo's recipe (4 epochs, seed 0) on the small preset's zoo.
pretrained: install
	$(PY) -m weightspace zoo generate --preset small --out $(DEMO_OUT)/zoo  # resumes; no-op when done
	$(PY) -m weightspace.pretrained.build --zoo $(DEMO_OUT)/zoo --name small --epochs 4 --seed 0

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
