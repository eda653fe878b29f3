# anatomix — two-command setup: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# EXTRAS=test,gpu on a GPU machine (onnxruntime-gpu, TensorRT, DALI instead of onnxruntime)
EXTRAS ?= dev
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: help install install-serve lock test test-fast lint serve serve-only clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install anatomix with its test dependencies

test: $(STAMP)  ## the whole suite (slow tests included), the Triton-interpreter tests, the README check
	$(PY) -m pytest -q --durations=25
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests/triton
	$(PY) scripts/check_docs.py

test-fast: $(STAMP)  ## run the suite without tests marked slow; parse-check the README
	$(PY) -m pytest -q -m "not slow"
	$(PY) scripts/check_docs.py --only-parse

lint: $(STAMP)  ## ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

serve: $(STAMP)  ## build demo models if ./exports has none, then bentoml on 127.0.0.1:3000
	@if [ -e $${ANATOMIX_MODELS:-exports}/.demo-incomplete ]; then \
	  echo "make serve: the demo build in $${ANATOMIX_MODELS:-exports}/ was interrupted: resuming it"; \
	  $(PY) scripts/demo_models.py --exports $${ANATOMIX_MODELS:-exports} || exit 1; \
	elif ! ls $${ANATOMIX_MODELS:-exports}/*/manifest.json >/dev/null 2>&1; then \
	  echo "make serve: no model under $${ANATOMIX_MODELS:-exports}/: building the demo models from synthetic data (minutes)"; \
	  $(PY) scripts/demo_models.py --exports $${ANATOMIX_MODELS:-exports} || exit 1; fi
	MALLOC_ARENA_MAX=$${MALLOC_ARENA_MAX:-2} $(VENV)/bin/bentoml serve serve.service:AnatomixService --host 127.0.0.1 --port 3000

SERVE_VENV ?= .venv-serve

$(SERVE_VENV)/.installed: serve/requirements.txt constraints.txt
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install --quiet -c constraints.txt -r serve/requirements.txt
	touch $@

install-serve: $(SERVE_VENV)/.installed  ## a serving-only venv (.venv-serve, no torch; see README)

serve-only: $(SERVE_VENV)/.installed  ## serve existing exports from the serving-only venv on 127.0.0.1:3000
	@ls $${ANATOMIX_MODELS:-exports}/*/manifest.json >/dev/null 2>&1 || { 	  echo "make serve-only: no model under $${ANATOMIX_MODELS:-exports}/ (build exports with the full install: make serve, or python -m export.run)"; exit 2; }
	MALLOC_ARENA_MAX=$${MALLOC_ARENA_MAX:-2} $(SERVE_VENV)/bin/bentoml serve serve.service:AnatomixService --host 127.0.0.1 --port 3000

lock:  ## re-resolve pyproject's [dev] dependencies in a clean venv into constraints.txt
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e '.[dev]'
	{ sed -n '1,2p' constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

clean:  ## remove caches (keeps .venv)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
