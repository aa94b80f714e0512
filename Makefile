# Two entry points do all the set-up on a fresh machine with Python 3.11+:
#   make train   creates .venv, installs llmlab, trains the default experiment
#   make test    creates .venv, installs llmlab with its test extra, runs the suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/default
EXTRAS ?= test

.PHONY: install train test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m experiments.train --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

bench: $(STAMP)
	$(PY) -m experiments.bench_train

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
