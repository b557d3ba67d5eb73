# Two commands on a fresh machine with Java 17 and Python 3.11:
#   make demo   installs everything into .venv and runs the whole pipeline on conf/demo.yaml
#   make test   installs everything into .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench dist clean own-search own-marketplace own-grid

$(STAMP): requirements.txt setup.py
	@command -v java >/dev/null || { echo "Java 17 is required (java not found on PATH)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ulr-spark run --simulate --config conf/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -ra tests

# The scaling benchmarks (the last run's time and disk use are in docs/benchmarks.md, which it rewrites).
bench: $(STAMP)
	$(BIN)/python bench/run.py --sizes 1M,10M,100M --throughput-at 10M

# ruff (lint, import order) and mypy (types) on the library; both settings are in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check ulr_spark tests bench jobs notebooks
	$(BIN)/mypy

test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra -m "not slow" tests

# The library's wheel, to install on cluster nodes or pack with its dependencies (docs/cluster.md).
dist: $(STAMP)
	rm -rf build
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w dist .
	rm -rf build

clean:
	rm -rf ulr-data spark-warehouse .pytest_cache build dist

# "Debias your own log" (docs/own_logs.md): a sample log of each shape, then every stage on it.
own-search: $(STAMP)
	$(BIN)/ulr-spark sample-log --shape search --config conf/own_search_log.yaml
	$(BIN)/ulr-spark run --config conf/own_search_log.yaml

own-marketplace: $(STAMP)
	$(BIN)/ulr-spark sample-log --shape marketplace --config conf/own_marketplace_log.yaml
	$(BIN)/ulr-spark run --config conf/own_marketplace_log.yaml

own-grid: $(STAMP)
	$(BIN)/ulr-spark sample-log --shape grid --config conf/own_grid_log.yaml
	$(BIN)/ulr-spark run --config conf/own_grid_log.yaml
