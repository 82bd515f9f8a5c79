# `make demo` and `make test` each create .venv and install on first use; `make test` also
# installs Debian's postgresql and chromium packages when missing (needs root).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test postgres-server chromium bench bench-multisite ui clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pipelines.demo

# The PostgreSQL server tests/test_postgres_instance.py starts; a no-op when installed.
postgres-server:
	@sh tests/support/install_postgres.sh

# The browser tests/test_browser.py drives (Debian's chromium); a no-op when installed.
chromium:
	@sh tests/support/install_chromium.sh

# Test files run in parallel, one file per worker at a time (module fixtures stay shared);
# TEST_WORKERS=1 runs them one after another.
test: $(STAMP) postgres-server chromium
	$(PY) -m pytest -q -p no:cacheprovider -n $${TEST_WORKERS:-2} --dist loadfile

# Long benchmarks, each printing a side-by-side table with ratios; not part of `make test`.
bench: $(STAMP)
	$(PY) benchmarks/placement.py
	$(PY) benchmarks/replication.py
	$(PY) benchmarks/executor_overhead.py
	$(PY) benchmarks/retry_stress.py
	$(PY) benchmarks/runtime_rule.py

# Sites as network namespaces joined by shaped links (root only; see benchmarks/multisite/README.md).
bench-multisite: $(STAMP)
	$(PY) benchmarks/multisite/run.py --rounds $${ROUNDS:-3}

# dagster dev on pipelines/: $DAGSTER_HOME, else the demo's instance once `make demo` ran,
# else .dagster_home (created with telemetry off); see pipelines/ui.py.
PORT ?= 3000
HOST ?= 127.0.0.1
ui: $(STAMP)
	$(PY) -m pipelines.ui --port "$(PORT)" --host "$(HOST)"

clean:
	rm -rf $(VENV) .gravity .dagster_home
