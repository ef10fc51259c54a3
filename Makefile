# One target per job; README and CI call these verbatim.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup system-deps demo test lint typecheck layers pytest bench clean

## setup: virtual environment with every dependency (frozen versions from requirements.lock)
setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock scripts/setup-venv.sh
	bash scripts/setup-venv.sh $(VENV)
	touch $(STAMP)

## system-deps: the Debian packages the product uses (OCR, PDF tools, LibreOffice, Chromium)
system-deps:
	bash scripts/install-system-deps.sh

## demo: set everything up and run the product on its embedded defaults
demo: system-deps setup
	bash scripts/demo.sh

## test: set everything up and run lint, type check, import layers and the whole test suite
test: system-deps setup lint typecheck layers pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

layers: setup
	$(VENV)/bin/lint-imports

pytest: setup
	bash scripts/run-pytest.sh $(VENV)

## bench: every benchmark in bench/ (writes JSON under bench/results/)
bench: setup
	bash scripts/run-bench.sh $(VENV)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
