# The two set-up commands of the README. Each creates .venv (if needed) and installs what it needs.
#   make serve   serve the shipped default model on http://127.0.0.1:8000 (CPU)
#   make test    install everything the tests need and run them
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip --disable-pip-version-check -q

.PHONY: serve test venv

venv:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)

serve: venv
	$(PIP) install -e '.[cpu,reports]'
	$(VENV)/bin/python -m service

test: venv
	$(PIP) install -e '.[cpu,dev,train,client,reports]'
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest
