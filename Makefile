# The README's two commands. Each sets itself up from nothing (a virtual environment in
# .venv with fxprune installed in it, with the optional model packages the tests build from
# configs) and is safe to run again.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test fuzz zoo-table

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test,bench,export,models]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fxprune demo

test: $(STAMP)
	$(VENV)/bin/ruff check fxprune tests benchmarks
	$(VENV)/bin/python -m pytest -q

# The long property run: FUZZ_EXAMPLES random CNNs, then a quarter as many token models, from a
# fresh seed that it prints first (FUZZ_SEED=N replays a run); the record goes to out/fuzz.json.
FUZZ_EXAMPLES ?= 10000
FUZZ_SEED ?=

fuzz: $(STAMP)
	$(VENV)/bin/python benchmarks/fuzz.py --examples $(FUZZ_EXAMPLES) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED)) \
		--out out/fuzz.json

zoo-table: $(STAMP)
	$(VENV)/bin/python benchmarks/coverage.py --out out/coverage
