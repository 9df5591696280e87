# Two entry points for a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed before the package: an unpinned torch pulls a
# multi-GB CUDA build, while 2.13.0 is a CPU build available locally.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.aide_ray-installed
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
# Reports and tables print and write "±"; CI machines may run with an ASCII locale.
export PYTHONUTF8 := 1

.PHONY: demo test test-fast setup clean

setup: $(STAMP)

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) jobs/train_aide.py

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs outputs .pytest_cache
