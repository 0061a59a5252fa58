# One-stop targets. `make test` and `make main` are the README's two commands.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
export FAIRARD_DATA ?= data

.PHONY: venv test main bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,book]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

main: venv
	$(PY) -m fairard demo --out data/results/demo.json

bench: venv
	$(PY) benchmarks/attack_throughput.py

clean:
	rm -rf $(VENV) book/_build
