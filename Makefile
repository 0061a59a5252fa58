# One-stop targets. `make test` and `make main` are the README's two commands.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Data: $FAIRARD_DATA if set; else a sibling ../shared/data that holds CIFAR-10 (the workplace's in-house
# copy, as .ci/run uses); else data/, where torchvision downloads CIFAR-10 on first use.
export FAIRARD_DATA ?= $(if $(wildcard ../shared/data/cifar10/train.npz),$(abspath ../shared/data),data)

.PHONY: venv test main bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,book]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

# The main job: notebooks/main_results.ipynb on its defaults (profile auto: gpu where a CUDA GPU is visible,
# else quick),
# executed by papermill; results cached under data/results/ (re-running reuses them). --log-output streams
# the notebook's output to the terminal: a line per run (trained/cached, done/total, ETA) and per epoch (img/s).
MAIN_OUT ?= data/results/main_results.ipynb
main: venv
	mkdir -p $(dir $(MAIN_OUT))
	$(VENV)/bin/papermill --log-output notebooks/main_results.ipynb $(MAIN_OUT) -p progress False

bench: venv
	$(PY) benchmarks/attack_throughput.py --models resnet20,resnet18

clean:
	rm -rf $(VENV) book/_build

# ---- the book (book/build.py): vendor the browser scripts (npm), papermill every notebook for
# PROFILE into book/executed/, then jupyter-book build -> book/_build/html/index.html.
# PROFILE=quick (default, 2-core CPU) | smoke (CI, numbers mean nothing) | paper | paper-official (GPU).
# OVERRIDES='{"teacher_checkpoint": "/abs/model_cifar_wrn.pt"}' passes profile fields to every notebook.
PROFILE ?= quick
BOOK_ARGS = --profile $(PROFILE) $(if $(OVERRIDES),--overrides '$(OVERRIDES)')
.PHONY: book book-strict book-browser book-test

book: venv
	$(PY) book/build.py $(BOOK_ARGS)

book-strict: venv
	$(PY) book/build.py $(BOOK_ARGS) --strict

# Headless Chromium for tests/test_book.py (Debian package `chromium`).
book-browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

book-test: venv book-browser
	$(PY) -m pytest -q tests/test_book.py
