# Two entry points do all the set-up on a fresh machine with Python 3.11+:
#   make train   creates .venv, installs llmlab, trains the default experiment
#   make test    creates .venv, installs llmlab with its test and interop extras, runs the suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.installed-base
TESTDEPS := $(VENV)/.installed-test
WORKDIR ?= runs/default
# Where make train writes results.json: the workdir itself, under runs/ (untracked). The committed
# results/default_run (the README's figures) is rewritten only when asked:
# make train RESULTS=results/default_run.
RESULTS ?= $(WORKDIR)
# The interop tests compare against transformers on the CPU build of torch; pinning it keeps pip
# from fetching a multi-gigabyte CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install train test mutants bench faults clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(BASE): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install --quiet -e .
	touch $(BASE)

$(TESTDEPS): $(BASE)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,interop]"
	touch $(TESTDEPS)

install: $(BASE)

train: $(BASE)
	$(PY) -m experiments.train --workdir=$(WORKDIR) --results_dir=$(RESULTS)

test: $(TESTDEPS)
	$(PY) -m pytest -q -n 2 --dist worksteal tests

# Breaks the maths one named mutation at a time (in a temporary copy) and checks a test fails.
mutants: $(TESTDEPS)
	$(PY) tests/mutants.py

bench: $(BASE)
	$(PY) -m experiments.bench_train

# Kills, full disks, damaged files and bad inputs, done to the real command line on the tiny
# config (several minutes); writes results/faults/results.json.
faults: $(BASE)
	$(PY) -m experiments.faults

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
