# Two commands on a fresh machine; each creates .venv when it is missing and installs the
# project into it (again when pyproject.toml changed).
#   make demo   the flywheel on a simulated teacher (tracer demo): no key, nothing to download
#   make test   the checks and tests CI runs (.ci/run calls it)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test

demo: $(BIN)/tracer
	$(BIN)/tracer demo

test: $(BIN)/tracer
	$(BIN)/ruff check .
	$(BIN)/mypy --strict router proxy
	$(BIN)/mypy training
	$(BIN)/pytest -q

$(BIN)/tracer: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@
