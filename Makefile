# The two commands of the README: `make run` (OSS mode with the demo archive) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The PostgreSQL pass of the suite; pytest-django creates and drops `test_<name>` beside it. It
# leaves to the SQLite pass the tests marked database_agnostic (a server's headers, a command's words).
TEST_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/kahn
# ... and reaches them through PgBouncer in transaction pooling mode on this port (.ci/services starts
# it), as a cloud deployment may (README, "Behind PgBouncer"). `make test TEST_POOLER_PORT=` goes direct.
TEST_POOLER_PORT ?= 6432

.PHONY: run test install services lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# `make run PORT=8090 ARCHIVE=path/to/.kahn/archive`: where to serve, and which archive to follow.
PORT ?= 8080
ARCHIVE ?= $(or $(KAHN_ARCHIVE),ingest/demo_archive)

run: install
	@echo "make run: KAHN Scope in OSS mode on http://127.0.0.1:$(PORT)/, following the archive $(ARCHIVE)"
	@echo "          (change them with: make run PORT=8090 ARCHIVE=path/to/.kahn/archive)"
	$(PY) manage.py migrate --no-input -v0
	KAHN_ARCHIVE='$(ARCHIVE)' $(PY) manage.py serve --port '$(PORT)'

services:
	bash .ci/services

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) manage.py makemigrations --check --dry-run -v0

# Each pass on every core, at most 4 workers; each worker has its own test database (`_gw0`, ...).
PARALLEL := --numprocesses auto --maxprocesses 4

test: install services lint
	$(VENV)/bin/pytest -m "not postgres" $(PARALLEL)
	DATABASE_URL=$(TEST_POSTGRES_URL) $(if $(TEST_POOLER_PORT),DATABASE_POOLER=transaction TEST_POOLER_PORT=$(TEST_POOLER_PORT)) \
		$(VENV)/bin/pytest -m "not database_agnostic" $(PARALLEL)
