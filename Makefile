# Ranqi: `make run` sets everything up and starts the portal; `make test` sets
# everything up and runs every check. Both work on a machine that has never
# seen the project (Python 3.11, Node.js/npm and make are all they need).

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 5000
KIOSK_PORT ?= 8088

export FLASK_APP := portal

.PHONY: run test setup lint typecheck pytest pytest-sqlite pytest-postgres lock clean bench

setup: $(STAMP) static/vendor/htmx.min.js portal/translations/en/LC_MESSAGES/messages.mo

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

static/vendor/htmx.min.js: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	mkdir -p static/vendor
	cp node_modules/htmx.org/dist/htmx.min.js static/vendor/htmx.min.js

portal/translations/en/LC_MESSAGES/messages.mo: portal/translations/en/LC_MESSAGES/messages.po $(STAMP)
	$(BIN)/pybabel -q compile --use-fuzzy -d portal/translations

run: export RANQI_ENV ?= development
run: export RANQI_JOBS_INPROCESS_SECONDS ?= 5
run: setup
	mkdir -p instance
	$(BIN)/ranqi db upgrade
	$(BIN)/ranqi demo
	HOST=$(HOST) PORT=$(PORT) KIOSK_PORT=$(KIOSK_PORT) scripts/run-dev

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

# The suite on SQLite, then on PostgreSQL (TEST_DATABASE_URL, or a throwaway
# cluster from the installed server: see scripts/with-postgres).
pytest: pytest-sqlite pytest-postgres

pytest-sqlite: setup
	TEST_DATABASE_URL= $(BIN)/pytest $(PYTEST_ARGS)

pytest-postgres: setup
	scripts/with-postgres $(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: setup
	$(BIN)/python bench/import_accounts.py

# Regenerate the pinned lock after changing pyproject.toml dependencies.
lock:
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) node_modules static/vendor instance/*.sqlite3 .pytest_cache .mypy_cache .ruff_cache
