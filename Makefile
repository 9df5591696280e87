# Two entry points for a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed before the package: an unpinned torch pulls a
# multi-GB CUDA build, while 2.13.0 is a CPU build available locally.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.aide_ray-installed
# The tests also cover the optional extras (MONAI backbones, TensorBoard/MLflow tracking);
# `make demo` needs none of them, so only the test targets install them.
TEST_STAMP := $(VENV)/.aide_ray-test-installed
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
# Reports and tables print and write "±"; CI machines may run with an ASCII locale.
export PYTHONUTF8 := 1

.PHONY: demo test test-fast setup clean chromium

setup: $(STAMP)

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,monai,tracking]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(PY) jobs/train_aide.py

test: $(TEST_STAMP) chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# The report page's browser test (tests/eval/test_run_report.py, marked slow) opens it in Debian's
# headless Chromium. Installed once, only for `make test`; as root (CI) or through sudo. Where it cannot
# be installed the test skips, except under CI, where that is an error.
chromium:
	@[ -x /usr/bin/chromium ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian's chromium for the browser test"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; } \
	    >/dev/null || { echo "chromium could not be installed: the browser test will be skipped$${CI:+ (an error under CI)}"; \
	      [ -z "$$CI" ]; }; }

test-fast: $(TEST_STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs outputs .pytest_cache
