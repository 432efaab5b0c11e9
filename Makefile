# Two commands: `make run` starts the platform, `make test` runs the whole suite.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-dj6 dj6-venv bench chaos lint clean

$(VENV)/.installed: requirements.txt bench/requirements.txt
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH (or make PY=python3)"; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -r bench/requirements.txt
	touch $@

.venv: $(VENV)/.installed

run: .venv
	$(BIN)/python manage.py release
	$(BIN)/python manage.py start

# pytest exits 5 when it collects nothing: that is a failure here, as is any other non-zero code.
# Two processes (pytest-xdist), a test file stays on one: live tests of one file share a worker
# setup, and each process has its own embedded PostgreSQL and Redis. Files are handed out in
# collection order (--no-loadscope-reorder), the slowest first (tests/conftest.py: SLOWEST_FIRST),
# so that no long file starts last while the other process has nothing left to do.
test: .venv dj6-venv
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# The Django 6 virtualenv (Python 3.12) that tests/acceptance/test_django6.py runs in: built here,
# before pytest (a few minutes on a clean clone, a second once built: a stamp of requirements.txt
# and the script), so that the suite's run only runs tests. No Python 3.12: nothing built, that
# test skips saying why.
dj6-venv: .venv
	$(BIN)/python scripts/django6.py --build-only

# The django.tasks backend's tests under Django 6.x (Python 3.12, .venv-dj6 built once; `make
# test` runs a part of them there too: tests/acceptance/test_django6.py).
test-dj6: .venv
	$(BIN)/python scripts/django6.py

bench: .venv
	$(BIN)/python -m bench.jobs
	$(BIN)/python -m bench.cluster
	$(BIN)/python -m bench.streams
	$(BIN)/python -m bench.tracing

# Hosts in network namespaces (root, iproute2, Debian's postgresql-15/redis-server/redis-sentinel):
# the chaos run (2,000 chains and 500 keyed events under faults), then the scale table.
chaos: .venv
	$(BIN)/python scripts/hosts.py chaos
	$(BIN)/python -m bench.scale

lint: .venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) .venv-dj6 var
