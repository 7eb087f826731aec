# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  # the first time: generate and publish the demo region; after that: publish it again
	@if [ -f .hub/region.yaml ]; then $(BIN)/hub publish; else $(BIN)/hub demo; fi

test: $(STAMP)
	$(BIN)/ruff check hub deid dagster_project tests benchmarks
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check hub deid dagster_project tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf .hub .pytest_cache
