# Every target sets up what it needs, so each works on a fresh machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
DEMO_LOG := tests/fixtures/logs/gha-gradle-test-failure.log
DEMO_PASS_LOG := tests/fixtures/logs/gha-gradle-test-failure.pass.log

.PHONY: demo test lint typecheck bench system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(STAMP)

# A real failed GitHub Actions log (a Gradle test failure), diffed against the same job's last green log.
demo: $(STAMP)
	$(BIN)/mendbot diagnose $(DEMO_LOG) --pass-log $(DEMO_PASS_LOG) --offline --format text
	@echo
	@echo "---- the comment Mendbot would post ----"
	$(BIN)/mendbot diagnose $(DEMO_LOG) --pass-log $(DEMO_PASS_LOG) --offline --format markdown

# Redis and PostgreSQL servers are real test dependencies; tests start their own instances.
system-deps:
	@scripts/system-deps.sh

test: $(DEV_STAMP) system-deps
	$(BIN)/ruff check bot tests bench app.py
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(DEV_STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
