# effsmall: two commands on a fresh machine.
#   make test   set up .venv, run the package tests and every chapter under nbval
#   make book   set up .venv, build the HTML book from the stored notebook outputs
#   make check-book   read the built book and fail on what a reader would trip over
# Also: make lab, make execute NB=chapters/01_why_efficiency.ipynb, make bench SUITE=ceilings,
#   make check-widgets (after make book: the book's explorers driven in headless Chromium)
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.effsmall-installed
JOBS    ?= 2
NBVAL   := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=600

.PHONY: setup test test-package test-chapters book check-book check-widgets lab execute bench clean sync-install

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

test: test-package test-chapters

test-package: setup
	$(PY) -m pytest -q -n $(JOBS) tests

test-chapters: setup
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile $(NBVAL) chapters

book: setup
	$(VENV)/bin/jupyter-book build . --all --warningiserror --nitpick --keep-going --quiet
	@echo "$(CURDIR)/_build/html/index.html"

# The explorers in the built book, served on localhost with no kernel, driven by selenium in
# headless Chromium (Debian: apt-get install chromium chromium-driver).
check-widgets: setup
	@test -f _build/html/index.html || (echo "no built book: run make book first" && exit 2)
	EFFSMALL_BROWSER=1 $(PY) -m pytest -q -p no:cacheprovider tests/browser

# Read the built book like a reader: no tracebacks/warnings in outputs, no raw TeX, no missing
# images or broken links, no figure wider than the text column, no project-log wording.
check-book: setup
	$(PY) tools/check_book.py _build/html

lab: setup
	$(VENV)/bin/jupyter lab chapters

# Re-execute one chapter in place (refreshes its stored outputs), e.g. make execute NB=chapters/02_*.ipynb
execute: setup
	@test -n "$(NB)" || (echo "usage: make execute NB=chapters/NN_name.ipynb" && exit 2)
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=900 $(NB)

# Rewrite every chapter's Colab install cell from _config.yml's repository address
sync-install: setup
	$(PY) tools/sync_install_cells.py

bench: setup
	$(PY) -m effsmall.bench $(SUITE) $(BENCH_ARGS)

clean:
	rm -rf _build .pytest_cache
