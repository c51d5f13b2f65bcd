VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DOCS_INSTALLED := $(VENV)/.docs-installed
LINT_DIRS := $(wildcard shapedsde tests benchmarks experiments docs)

.PHONY: install demo demo-figure figures test test-all lint docs docs-serve clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# the SDE-vs-network comparison; its figure goes to results/ (ignored by git)
DEMO := compare --normalize rms --paths 2000
demo: $(INSTALLED)
	$(VENV)/bin/shapedsde $(DEMO) --out results/demo.png

# the same run, writing the README's figure (tracked): rerun after a change of the simulators
demo-figure: $(INSTALLED)
	$(VENV)/bin/shapedsde $(DEMO) --out figures/demo.png

# the package's figures (experiments/*.py) into figures/; e.g. make figures FIGURE_ARGS="--quick"
figures: $(INSTALLED)
	$(VENV)/bin/shapedsde figures $(FIGURE_ARGS)

# CI's set: every test but the statistical ones marked slow, in two worker processes (most
# tests are dominated by single-threaded XLA compilation); then the linter
test: $(INSTALLED)
	$(PY) -m pytest -q -n 2 -m "not slow" --durations=15
	$(VENV)/bin/ruff check $(LINT_DIRS)

# every test, the slow statistical ones included (about 25 minutes on 2 cores): run it for a
# change of the science, the solver or the simulators
test-all: $(INSTALLED)
	$(PY) -m pytest -q -n 2 --durations=15
	$(VENV)/bin/ruff check $(LINT_DIRS)

# the documentation site (docs/, mkdocs.yml) into site/ (ignored by git); --strict: any warning
# (a broken link, a docstring griffe cannot parse, a number missing from its JSON) fails
docs: $(DOCS_INSTALLED)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(DOCS_INSTALLED)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

$(DOCS_INSTALLED): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[docs]'
	touch $@

lint: $(INSTALLED)
	$(VENV)/bin/ruff check $(LINT_DIRS)

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info site
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print | xargs rm -rf
