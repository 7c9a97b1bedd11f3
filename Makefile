# Quick start: `make train` (train on the bundled digits) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install train test eval bench clean

install: $(STAMP)

# torch and torchvision are pinned together: on this kind of machine they come from local disk.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# The digits recipe (conf/experiment/digits.yaml) unless ARGS picks another experiment.
train: $(STAMP)
	$(PY) src/train.py $(if $(findstring experiment=,$(ARGS)),,experiment=digits) $(ARGS)

eval: $(STAMP)
	$(PY) src/eval.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV)
