# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up on demand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8080

# Development secrets for `make run` only; a real deployment sets its own in the environment.
DEV_META_APP_SECRET := dev-meta-app-secret
DEV_META_VERIFY_TOKEN := dev-verify-token
DEV_SLACK_SIGNING_SECRET := dev-slack-signing-secret

.PHONY: run test lint typecheck pytest test-reliability bench clean postgres

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(STAMP)
	@META_APP_SECRET="$${META_APP_SECRET:-$(DEV_META_APP_SECRET)}"; \
	META_VERIFY_TOKEN="$${META_VERIFY_TOKEN:-$(DEV_META_VERIFY_TOKEN)}"; \
	SLACK_SIGNING_SECRET="$${SLACK_SIGNING_SECRET:-$(DEV_SLACK_SIGNING_SECRET)}"; \
	export META_APP_SECRET META_VERIFY_TOKEN SLACK_SIGNING_SECRET; \
	if [ -z "$${SLACK_BOT_TOKEN:-}" ]; then \
	  echo "pinwatch: no SLACK_BOT_TOKEN, so this is a dry run: Slack calls are printed, not sent."; \
	  echo "  development secrets: META_APP_SECRET=$$META_APP_SECRET META_VERIFY_TOKEN=$$META_VERIFY_TOKEN SLACK_SIGNING_SECRET=$$SLACK_SIGNING_SECRET"; \
	  echo "  try it from a second shell:"; \
	  echo "    META_APP_SECRET=$$META_APP_SECRET $(BIN)/pinwatch send-test --url http://127.0.0.1:$(PORT)/webhook"; \
	fi; \
	exec $(BIN)/pinwatch serve --config config.example.yaml --host 127.0.0.1 --port $(PORT)

# pytest exits 5 when it collects no test; make treats that like any failure, so CI cannot pass empty.
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check bot tests bench
	$(BIN)/ruff format --check bot tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# Three workers on two cores: most of a test's time is spent waiting on loopback and timers.
pytest: $(STAMP) postgres
	$(BIN)/pytest -q -m "not slow" -n 3

test-reliability: $(STAMP) postgres
	$(BIN)/pytest -q -m slow

# The tests start a throwaway PostgreSQL from the server binaries (tests/postgres.py): install
# Debian's where they are missing, unless PINWATCH_TEST_DATABASE_URL names a running server.
postgres:
	@if [ -z "$${PINWATCH_TEST_DATABASE_URL:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	    && ! command -v initdb >/dev/null; then \
	  echo "installing PostgreSQL's server binaries for the tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi

# Load runs on this machine only (loopback); never part of `make test`.
bench: $(STAMP)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis pinwatch.db pinwatch.db-*
