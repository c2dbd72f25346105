# ftlog developer tasks. Every target sets up its own virtualenv first, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test quick lint typecheck pytest demo screenshot bench smoke clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check ftlog tests $(wildcard bench) docs
	$(BIN)/ruff format --check ftlog tests $(wildcard bench) docs

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

# The edit-test loop: everything but the tests marked slow (crashes, concurrency, browser, notebook, S3, bench).
quick: lint typecheck
	$(BIN)/pytest -m "not slow"

smoke: $(STAMP)
	$(BIN)/ftlog --help >/dev/null && echo "ftlog CLI ok"

demo: $(STAMP)
	$(BIN)/ftlog demo --out reports/demo

# The README's picture of the interactive report, from the demo's (needs Chromium).
screenshot: demo
	$(BIN)/python docs/screenshot.py reports/demo/index.html docs/report.png

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache reports build dist
