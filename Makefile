# Two commands do everything on a fresh machine:  make demo   |   make test
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qponder-installed

.PHONY: demo test bench install clean

$(STAMP): requirements/lock.txt requirements/nodeps.txt requirements/deepspeed-cpu.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps -r requirements/nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --upgrade --target $(VENV)/deepspeed \
		-r requirements/deepspeed-cpu.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

## The main job on its embedded default: tiny model + built-in demo data, on CPU.
demo: $(STAMP)
	$(VENV)/bin/qponder demo --out demo-out

## The offline test suite.
test: $(STAMP)
	$(PY) -m pytest -q

## Benchmarks (speed/memory ratios and the learning curve); writes bench-out/.
bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf demo-out bench-out .pytest_cache
