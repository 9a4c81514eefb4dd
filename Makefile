# fodl — one venv, everything through it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: install train test lint reproduce benchmark tensorboard clean

# torch/torchvision are pinned in pyproject; pip takes them from the local wheel cache when present.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install          ## default experiment: the book's MNIST MLP (chapter 3); extra overrides via ARGS="..."
	$(PY) scripts/train.py $(ARGS)

test: install           ## the whole test suite (CPU, no internet); real-data tests read ../shared/data
	$(PY) -m pytest $(ARGS)

lint: install
	$(PY) -m ruff check src scripts tests

benchmark: install      ## fodl vs a plain PyTorch loop, same process, same data
	$(PY) scripts/benchmark.py $(ARGS)

$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -e ".[bench]"
	touch $@

reproduce: $(VENV)/.bench   ## results: run what is missing of every CPU registry entry of <= 10 min a seed, peers (the bench extra) included; write docs/results.md (ARGS="--chapter 6", "--only <id>", "--gpu", "--report")
	$(PY) scripts/reproduce.py --cpu-minutes 10 $(ARGS)

tensorboard: install
	$(VENV)/bin/tensorboard --logdir outputs/

clean:
	rm -rf outputs/*/ .pytest_cache
