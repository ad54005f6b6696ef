# WardWatch: make demo (the main job end to end), make test (the tests).
# Everything installs what it needs: uv from PyPI into .tools/, the locked environment
# into .venv/ (uv's cache in ~/.cache/uv makes a second clone's install fast), the
# Kafka jars through Maven into ~/.m2.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_BASE ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
SERVICES := bash compose/services.sh
PG_URL := postgresql+psycopg://wardwatch:wardwatch@127.0.0.1:5433/wardwatch
PYTEST_ARGS ?=
# The local targets run on the local services' public credentials and the default
# pseudonym key: development mode lets components start on them (streams/deploy_checks.py).
export WARDWATCH_DEV_MODE ?= 1

.PHONY: help venv up down status logs demo test test-unit test-integration lint format bench model crossval policy clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON_BASE) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python "$(PYTHON_BASE)"
	touch $@

venv: $(VENV)/.synced ## Create .venv from uv.lock (reproducible, cached)

up: venv ## Start Kafka, PostgreSQL and Triton on loopback (idempotent)
	$(SERVICES) up

down: ## Stop the local services
	$(SERVICES) down

status: ## Show the local services' state
	$(SERVICES) status

logs: ## Tail the local services' logs
	$(SERVICES) logs

demo: venv ## The main job end to end: services, worker, replay, summary, stop
	$(SERVICES) up
	rc=0; WARDWATCH_DATABASE_URL=$${WARDWATCH_DATABASE_URL:-$(PG_URL)} \
	  $(PY) -m streams demo $(DEMO_ARGS) || rc=$$?; \
	$(SERVICES) down; exit $$rc

bench: venv ## Benchmarks on the local services; writes BENCHMARKS.md
	$(SERVICES) up
	rc=0; $(PY) -m streams.bench $(BENCH_ARGS) && $(PY) -m streams.bench_flood || rc=$$?; $(SERVICES) down; exit $$rc

test: venv ## All tests: unit, then integration and end-to-end on the local services
	$(SERVICES) up
	rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; $(SERVICES) down; exit $$rc

test-unit: venv ## Unit tests only (no services)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: venv ## ruff, ruff format --check, mypy --strict, import-linter layers
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: venv ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The exact commands that produced the served model (also in its model card): version 4,
# the transformer with the patient context (trained as its base, not served alone), then
# the ensemble of it and gradient boosting on feature set 2 (counts and recency of
# measurements); its alert policy chosen on cross-validation run 6's folds (make policy;
# reused when present); evaluated once on validation.
MODEL_VERSION := 4
MODEL_ARGS ?= --seed 2019 --epochs 2 --neg-ratio 6 --batch-size 128 --lr 0.001 --patience 4 --version $(MODEL_VERSION) --context
ENSEMBLE_ARGS ?= --version $(MODEL_VERSION) --seed 0 --feature-set 2
MODEL_BUILD := var/model-build
POLICY_CV := var/crossval-counts
POLICY_CV_ARGS := --feature-sets 1 2 --context
model: venv ## Retrain and export the served risk model, v4 (about 10 min on 2 cores, 40 without make policy's folds)
	rm -rf $(MODEL_BUILD) && mkdir -p $(MODEL_BUILD)
	$(PY) -m streams train $(MODEL_ARGS) --out-dir $(MODEL_BUILD)/base
	$(PY) -m inference.ensemble build --base-dir $(MODEL_BUILD)/base/sepsis_transformer --out $(MODEL_BUILD) $(ENSEMBLE_ARGS)
	$(PY) -m inference.crossval $(POLICY_CV_ARGS) --out $(POLICY_CV)
	$(PY) -m inference.policy_tuning --crossval $(POLICY_CV) --feature-set 2 --out $(MODEL_BUILD)/policy \
	  --write-card $(MODEL_BUILD)/sepsis_transformer/model_card.json
	$(PY) -m streams evaluate --model-dir $(MODEL_BUILD)/sepsis_transformer --out $(MODEL_BUILD)/reports/$(MODEL_VERSION)
	$(PY) -m inference.ensemble card --model-dir $(MODEL_BUILD)/sepsis_transformer --report $(MODEL_BUILD)/reports/$(MODEL_VERSION)/metrics.json
	rm -rf inference/model_repository/sepsis_transformer/[0-9]*
	cp -r $(MODEL_BUILD)/sepsis_transformer/$(MODEL_VERSION) inference/model_repository/sepsis_transformer/
	cp $(MODEL_BUILD)/sepsis_transformer/model_card.json $(MODEL_BUILD)/sepsis_transformer/config.pbtxt inference/model_repository/sepsis_transformer/
	mkdir -p inference/reports/$(MODEL_VERSION) inference/reports/policy
	cp $(MODEL_BUILD)/reports/$(MODEL_VERSION)/* inference/reports/$(MODEL_VERSION)/
	cp $(MODEL_BUILD)/policy/report.md $(MODEL_BUILD)/policy/policy.json $(MODEL_BUILD)/policy/policy.png inference/reports/policy/

# Cross-validation on the train split (validation not read): the runs behind
# inference/reports/crossval/, each reusing its fold files when run again.
CROSSVAL_REPORTS := inference/reports/crossval
crossval: venv ## Cross-validate the ensemble configurations on the train split (about 2 h on 2 cores)
	$(PY) -m inference.crossval --out var/crossval
	$(PY) -m inference.crossval --feature-sets 1 --epochs 12 --baseline var/crossval --out var/crossval-epochs
	$(PY) -m inference.crossval --feature-sets 1 --gbm-max-iter 1000 --baseline var/crossval --out var/crossval-gbm
	$(PY) -m inference.crossval --feature-sets 1 --out var/crossval-v2
	$(PY) -m inference.crossval --feature-sets 1 --context --baseline var/crossval-v2 --out var/crossval-context
	$(PY) -m inference.crossval --feature-sets 1 --context --pretrain-epochs 1 --baseline var/crossval-context --out var/crossval-pretrain
	$(PY) -m inference.crossval $(POLICY_CV_ARGS) --out $(POLICY_CV)
	$(PY) -m inference.crossval --feature-sets 2 --context --neg-ratio 12 --baseline $(POLICY_CV) --out var/crossval-negatives
	$(PY) -m inference.crossval --feature-sets 2 --context --early-label-hours 6 --baseline $(POLICY_CV) --out var/crossval-early
	mkdir -p $(CROSSVAL_REPORTS)/feature-sets $(CROSSVAL_REPORTS)/epochs $(CROSSVAL_REPORTS)/gbm-iterations $(CROSSVAL_REPORTS)/context $(CROSSVAL_REPORTS)/pretraining $(CROSSVAL_REPORTS)/counts $(CROSSVAL_REPORTS)/negatives $(CROSSVAL_REPORTS)/early-labels
	cp var/crossval/report.md var/crossval/metrics.json var/crossval/crossval.png $(CROSSVAL_REPORTS)/feature-sets/
	cp var/crossval-epochs/report.md var/crossval-epochs/metrics.json var/crossval-epochs/crossval.png $(CROSSVAL_REPORTS)/epochs/
	cp var/crossval-gbm/report.md var/crossval-gbm/metrics.json var/crossval-gbm/crossval.png $(CROSSVAL_REPORTS)/gbm-iterations/
	cp var/crossval-context/report.md var/crossval-context/metrics.json var/crossval-context/crossval.png $(CROSSVAL_REPORTS)/context/
	cp var/crossval-pretrain/report.md var/crossval-pretrain/metrics.json var/crossval-pretrain/crossval.png $(CROSSVAL_REPORTS)/pretraining/
	cp $(POLICY_CV)/report.md $(POLICY_CV)/metrics.json $(POLICY_CV)/crossval.png $(CROSSVAL_REPORTS)/counts/
	cp var/crossval-negatives/report.md var/crossval-negatives/metrics.json var/crossval-negatives/crossval.png $(CROSSVAL_REPORTS)/negatives/
	cp var/crossval-early/report.md var/crossval-early/metrics.json var/crossval-early/crossval.png $(CROSSVAL_REPORTS)/early-labels/

# The alert policy alone, chosen on the held-out predictions of the served configuration
# (cross-validation run 6: feature set 2 with the patient context), written into the served
# model card.
policy: venv ## Choose the alert policy by cross-validation on the alert state (about 10 min)
	$(PY) -m inference.crossval $(POLICY_CV_ARGS) --out $(POLICY_CV)
	$(PY) -m inference.policy_tuning --crossval $(POLICY_CV) --feature-set 2 --out var/policy \
	  --write-card inference/model_repository/sepsis_transformer/model_card.json
	mkdir -p inference/reports/policy && cp var/policy/report.md var/policy/policy.json var/policy/policy.png inference/reports/policy/

clean: down ## Remove local state (services' data, databases, logs)
	rm -rf var
