# The README's two commands (`make demo`, `make test`) set everything up by themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.unetlab-installed

.PHONY: demo test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m unetlab demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -p no:cacheprovider

$(VENV)/.unetlab-bench: $(STAMP)
	$(PY) -m pip install -q monai
	$(PY) -m pip install -q --no-binary elasticdeform elasticdeform==0.5.1
	touch $@

bench: $(VENV)/.unetlab-bench
	$(PY) -m benchmarks $(BENCH)

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info
