# Two entry points (README quick start): `make run` and `make test`.
# Both set up the venv only when requirements.txt changed, and build the default zoo only when
# its recipe version changed, so running them again does not reinstall or rebuild anything.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements-installed
PORT   ?= 8501

.PHONY: setup zoo run test bench clean

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is needed)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

zoo: setup
	$(PY) -m explorer zoo build

run: zoo
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) \
		--browser.gatherUsageStats false

test: zoo
	$(PY) -m pytest

bench: setup
	$(PY) bench/bench_engine.py

clean:
	rm -rf $(VENV) cache/zoo cache/results test-artifacts .pytest_cache
