# Cairn — the commands a newcomer and CI run. Everything installs into .venv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: help dev test test-deep bench bench-http proto clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (3.11 or newer) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

dev: $(STAMP)  ## start a local server; prints endpoint and credentials (ARGS="--port 9001")
	$(BIN)/cairn dev $(ARGS)

test: $(STAMP)  ## the default test run (CI runs this)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(ARGS)

test-deep: $(STAMP)  ## longer hypothesis profiles and crash storms
	CAIRN_DEEP=1 $(BIN)/python -m pytest -q -p no:cacheprovider -o timeout=7200 -m 'deep or not deep' $(ARGS)

bench: $(STAMP)  ## the benchmarks, with the machine they ran on
	$(BIN)/python -m bench.s3_bench $(ARGS)
	$(BIN)/python -m bench.s3_bench --cluster -w put4k64,get4k64,put64k32,get64k32,list
	$(BIN)/python -m bench.s3_bench --cluster --process-per-disk -w put64m,put64m4,get64m,get64mdeg
	$(BIN)/python -m bench.ec_blob_bench
	$(BIN)/python -m bench.journal_bench
	$(BIN)/python -m bench.cache_bench
	$(BIN)/python -m bench.shardstore_bench
	$(BIN)/python -m bench.erasure_bench
	$(BIN)/python -m shardstore.placement_sim

bench-http: $(STAMP)  ## the HTTP server candidates (DESIGN §11) on the same minimal PUT/GET handler
	$(BIN)/python -m bench.http_candidates $(ARGS)

clean:  ## remove the environment and caches
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
