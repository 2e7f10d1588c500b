# Set-up and everyday commands. `make run` and `make test` are all a newcomer needs.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PYTHON := $(VENV)/bin/python
# Reinstall only when a lock file changes.
INSTALLED := $(VENV)/.installed
BENCH_INSTALLED := $(VENV)/.installed-bench
PIP_INSTALL := $(PYTHON) -m pip install --disable-pip-version-check --quiet
PYTEST_ARGS ?=
# The lock tool lives in a throwaway venv: nothing at run time or in tests needs it.
UV_VERSION := 0.13.9
LOCK_ARGS ?=

.PHONY: help venv install run lint test test-field test-hosts bench lock clean-data

help:
	@echo "make run                 web + Celery worker + beat (embedded Postgres, Redis, S3 where none is configured)"
	@echo "make test                lint, then the test suite (PYTEST_ARGS='-k foo' to narrow it)"
	@echo "make lint                ruff check, ruff format --check, mypy, import rules (docs/architecture.md)"
	@echo "make test-field          the full field day (tests/field): 3 phones, 100 MiB videos, faults"
	@echo "make test-hosts          several hosts behind HAProxy, one web and one worker host lost"
	@echo "                         mid-upload and mid-apply (tests/hosts; root, ip netns; ~2 min)"
	@echo "make bench               the benchmarks, against their own database and object store"
	@echo "make lock                re-pin requirements*.lock (with hashes) from requirements*.txt;"
	@echo "                         keeps current pins unless LOCK_ARGS='--upgrade[-package NAME]'"
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

# The editable client can carry no hash, so it stays out of the lock; its one dependency
# (requests) is locked.
$(INSTALLED): requirements-dev.lock client/pyproject.toml | $(PYTHON)
	$(PIP_INSTALL) --require-hashes -r requirements-dev.lock
	$(PIP_INSTALL) --no-deps -e ./client
	touch $@

$(BENCH_INSTALLED): requirements-bench.lock $(INSTALLED)
	$(PIP_INSTALL) --require-hashes -r requirements-bench.lock
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

# Network namespaces need root; the test installs Debian's haproxy and faketime if missing.
test-hosts: $(INSTALLED)
	$(PYTHON) -m devstack test -m hosts tests/hosts $(PYTEST_ARGS)

bench: $(BENCH_INSTALLED)
	$(PYTHON) -m devstack exec -- $(PYTHON) -m bench

# The dev lock is resolved first; the runtime and bench locks take its versions, so production
# and the benchmarks run exactly what the tests ran. --universal: one lock for every platform
# a developer may be on, not just this one.
lock: | $(PYTHON)
	@tools=$$(mktemp -d) && trap 'rm -rf "$$tools"' EXIT && \
	$(PYTHON) -m venv "$$tools" && \
	"$$tools/bin/pip" install --disable-pip-version-check --quiet uv==$(UV_VERSION) && \
	compile=("$$tools/bin/uv" pip compile --quiet --universal --python-version 3.11 \
		--generate-hashes --custom-compile-command "make lock" $(LOCK_ARGS)) && \
	"$${compile[@]}" requirements-dev.txt --no-emit-package fieldsync-client \
		-o requirements-dev.lock && \
	"$${compile[@]}" requirements.txt -c requirements-dev.lock -o requirements.lock && \
	"$${compile[@]}" requirements-bench.txt --no-emit-package fieldsync-client \
		-c requirements-dev.lock -o requirements-bench.lock

clean-data:
ifeq ($(CONFIRM),1)
	rm -rf .data
else
	@echo "This deletes .data/: the database, Redis and object store of make run." >&2
	@echo "Stop make run first, then: make clean-data CONFIRM=1" >&2
	@exit 1
endif
