# The two commands of the README:
#   make demo   set up .venv if needed, then run studies/mobile_pareto.py into ./nasopt.db
#   make test   set up .venv if needed, then run the whole test suite
# VENV may point elsewhere (CI reuses a cached environment keyed on the dependency list).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEPS_HASH := $(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
STAMP := $(VENV)/.deps-$(DEPS_HASH)

.PHONY: demo test setup lint clean

setup: $(STAMP)
	@$(BIN)/python -c "import nasopt, os, sys; sys.exit(not nasopt.__file__.startswith(os.getcwd() + os.sep))" 2>/dev/null \
	  || $(BIN)/pip install -q --no-deps --no-build-isolation -e .

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,postgres,bayes]'
	@rm -f $(VENV)/.deps-* && touch $(STAMP)

demo: setup
	$(BIN)/nasopt run studies/mobile_pareto.py

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check nasopt search_spaces cli tests benchmarks studies
	$(BIN)/mypy nasopt

clean:
	rm -rf $(VENV) nasopt.db *.egg-info
