# Loupe — `make run` starts the app, `make test` runs the suite. Both create .venv and
# install what they need on first use, and do nothing extra when already set up.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
APP_STAMP  := $(VENV)/.installed-app
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test install bench clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
		|| { echo "Loupe needs Python 3.11 or newer (PYTHON=$(PYTHON))."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(APP_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	@touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@ $(APP_STAMP)

install: $(APP_STAMP)

run: $(APP_STAMP)
	$(VENV)/bin/loupe serve

test: $(TEST_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	$(PY) bench/bench_load.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
