# Two entry points, each self-sufficient on a fresh machine with Python 3.11 and make:
#   make demo   synthetic sample data -> all five notebooks through papermill -> runs/demo/
#   make test   the test suite (what CI runs)
#   make test-fast   the inner loop: the tests not marked slow (end to end, training, real footage, real services)
# Both create .venv on first use and install the pinned dependencies from pyproject.toml into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lab bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "a2m needs Python 3.11; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/a2m demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -ra

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -ra -m "not slow"

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/extraction.py
	$(VENV)/bin/python benchmarks/training.py
	$(VENV)/bin/python benchmarks/real_footage.py

clean:
	rm -rf runs/demo data/raw/demo data/processed/demo runs/real data/raw/real data/processed/real
