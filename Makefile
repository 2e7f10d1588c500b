# Set-up and everyday commands. `make run` and `make test` are all a newcomer needs.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PYTHON := $(VENV)/bin/python
# Reinstall only when a requirements file changes.
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv install run lint test test-field bench clean-data

help:
	@echo "make run                 web + Celery worker + beat (embedded Postgres, Redis, S3 where none is configured)"
	@echo "make test                lint, then the test suite (PYTEST_ARGS='-k foo' to narrow it)"
	@echo "make lint                ruff check, ruff format --check, mypy, import rules (docs/architecture.md)"
	@echo "make test-field          the full field day (tests/field): 3 phones, 100 MiB videos, faults"
	@echo "make bench               the benchmarks, against their own database and object store"
	@echo "make clean-data CONFIRM=1  delete .data/ (everything make run stored)"

venv install: $(INSTALLED)

# A pyenv shim can exist for a version that is not installed, so each candidate is run, not
# just looked up.
$(PYTHON):
	@for candidate in python3.11 python3; do \
		if "$$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then \
			echo "creating $(VENV) with $$candidate"; \
			exec "$$candidate" -m venv $(VENV); \
		fi; \
	done; \
	echo "Python 3.11 is required: neither python3.11 nor python3 is 3.11" >&2; exit 1

$(INSTALLED): requirements.txt requirements-dev.txt | $(PYTHON)
	$(PYTHON) -m pip install --disable-pip-version-check --quiet -r requirements-dev.txt
	touch $@

run: $(INSTALLED)
	$(PYTHON) -m devstack run

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	# The type checker imports the settings, which a deployment must configure itself.
	SECRET_KEY=type-check-only ALLOWED_HOSTS=localhost $(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports

test: lint
	$(PYTHON) -m devstack test $(PYTEST_ARGS)

# The full field day writes its summary to docs/field-day.md (make test plays the short one).
test-field: $(INSTALLED)
	FIELD_DAY=full $(PYTHON) -m devstack test tests/field/test_field_day.py -s $(PYTEST_ARGS)

bench: $(INSTALLED)
	$(PYTHON) -m devstack exec -- $(PYTHON) -m bench

clean-data:
ifeq ($(CONFIRM),1)
	rm -rf .data
else
	@echo "This deletes .data/: the database, Redis and object store of make run." >&2
	@echo "Stop make run first, then: make clean-data CONFIRM=1" >&2
	@exit 1
endif
