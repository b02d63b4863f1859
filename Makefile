# taxonstream — `make demo` and `make test` do all set-up on a fresh Debian machine (root, Python 3.11).
SHELL := /bin/bash
VENV ?= .venv
PY ?= $(VENV)/bin/python
PYTHON3 ?= python3
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# The local demo fetches from a sample site on this machine, which the fetcher refuses by default.
DEMO_ALLOW := --allow-network 127.0.0.0/8

.PHONY: help install demo test unit integration lint protos up down status clean-stack

help:
	@echo "make demo   start the local stack, ingest a generated sample served on loopback, search it"
	@echo "make test   the whole suite (starts the real Kafka, S3 and Triton; stops them at the end)"
	@echo "make up | down | status   the local stack;  make protos   regenerate services/taxonstream/v1"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	# torch pinned on its own first: an unpinned requirement would pull the CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[models,dev,eval,milvus,export,portal,landcover]"
	rm -f $(VENV)/.installed-* && touch $@

demo: install
	$(VENV)/bin/taxonstream stack up $(DEMO_ALLOW)
	$(PY) -m tools.demo.run

test: install browser
	$(PY) -m pytest -ra

unit: install
	$(PY) -m pytest -ra -m "not integration"

integration: install browser
	$(PY) -m pytest -ra -m integration

lint: install
	$(VENV)/bin/ruff check .

protos: install
	$(PY) tools/gen_protos.py

up: install
	$(VENV)/bin/taxonstream stack up $(DEMO_ALLOW)

down:
	$(VENV)/bin/taxonstream stack down

status:
	$(VENV)/bin/taxonstream stack status

-include mk/*.mk
