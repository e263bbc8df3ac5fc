# Propel: `make help` lists the targets. Everything runs inside .venv, created on first use.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CUSTOMERS ?= 20000
DAYS ?= 365
SEED ?= 7
RAW ?= data/raw

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; install Python 3.11"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

.PHONY: help
help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.PHONY: install
install: $(STAMP) ## Create .venv and install Propel with its dependencies

.PHONY: data
data: $(STAMP) ## Generate the demo data set into data/raw (CUSTOMERS, DAYS, SEED)
	$(BIN)/propel generate --customers $(CUSTOMERS) --days $(DAYS) --seed $(SEED) $(RAW)

.PHONY: ingest
ingest: $(STAMP) ## Ingest data/raw into the lake (validate, clean, resolve identities)
	$(BIN)/propel ingest $(RAW)

ONLINE ?= sqlite
.PHONY: features
features: $(STAMP) ## Build feature snapshots, apply the Feast repo, materialize (ONLINE=sqlite|redis)
	$(BIN)/propel features build
	$(BIN)/propel features apply --online $(ONLINE)
	$(BIN)/propel features materialize --online $(ONLINE)

TUNE ?= 0
.PHONY: train
train: $(STAMP) ## Train churn, propensity and uplift; promote winners (TUNE=seconds of Optuna search)
	$(BIN)/propel train all --tune-seconds $(TUNE) $(if $(wildcard $(RAW)/_truth),--truth $(RAW)/_truth)

.PHONY: models
models: $(STAMP) ## List registered models and champions
	$(BIN)/propel models list

.PHONY: segments
segments: $(STAMP) ## Segment customers (RFM, lifecycle, value tier, clusters) into the Feast view customer_segments
	$(BIN)/propel segments

.PHONY: report
report: $(STAMP) ## Write the HTML analytics report to data/reports/report.html (KPIs, attribution, A/B tests, models)
	$(BIN)/propel report

.PHONY: monitor
monitor: $(STAMP) ## Check drift, freshness and daily KPIs; fails (exit 1) when an alert fires
	$(BIN)/propel monitor

.PHONY: serve
serve: $(STAMP) ## Serve recommendations and scores over HTTP (BentoML; PORT, WORKERS override propel.toml)
	$(BIN)/propel serve $(if $(PORT),--port $(PORT)) $(if $(WORKERS),--workers $(WORKERS))

MLFLOW_PORT ?= 5000
.PHONY: mlflow-ui
mlflow-ui: $(STAMP) ## Open MLflow's UI on the workspace's runs and models (PROPEL_HOME, else here; MLFLOW_PORT)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(or $(PROPEL_HOME),.))/mlruns/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

.PHONY: demo
demo: $(STAMP) ## Run the whole pipeline on generated demo data
	@test -d $(RAW) || $(MAKE) --no-print-directory data
	$(MAKE) --no-print-directory ingest
	$(MAKE) --no-print-directory features
	$(MAKE) --no-print-directory train
	$(MAKE) --no-print-directory segments
	$(MAKE) --no-print-directory models
	$(MAKE) --no-print-directory report

.PHONY: test
test: $(STAMP) ## Run the whole test suite, as CI does
	$(BIN)/python -m pytest -q

.PHONY: test-fast
test-fast: $(STAMP) ## Run the fast tier: unit and data tests, no trained models or built features (about a minute)
	$(BIN)/python -m pytest -q -m "not slow"

.PHONY: docs
docs: $(STAMP) ## Regenerate the generated sections of docs/ from the code
	$(BIN)/python -m propel.docs

.PHONY: bench
bench: $(STAMP) ## Run the benchmarks and update docs/benchmarks.md (takes a while)
	$(BIN)/python bench/run.py

.PHONY: bench-serve
bench-serve: $(STAMP) ## Load-test the HTTP service on loopback (wrk) against the demo workspace; figures to bench/results
	$(BIN)/python bench/serve.py

.PHONY: clean
clean: ## Remove generated data and runs (keeps .venv)
	rm -rf data mlruns/*.db mlruns/[0-9]*
