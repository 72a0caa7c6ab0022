# The README's two commands (`make demo`, `make test`) set everything up by themselves.
# `make install` only sets up .venv; then `source .venv/bin/activate` puts `unetlab` on PATH.
# TORCH_INDEX=URL installs torch from that index first (e.g. the CPU-only build:
# https://download.pytorch.org/whl/cpu); by default pip takes torch from PyPI.
PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.unetlab-installed
TORCH       := $(shell sed -n 's/^ *"\(torch==[^"]*\)".*/\1/p' pyproject.toml)
TORCH_INDEX ?=

.PHONY: install demo test test-slow bench clean

$(STAMP): pyproject.toml
	@echo "==> [1/3] creating $(VENV) with $(PYTHON)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/3] installing $(TORCH) (the largest download: a few minutes the first time)"
	$(PY) -m pip install --progress-bar on $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH)'
	@echo "==> [3/3] installing unetlab and its other dependencies into $(VENV)"
	$(PY) -m pip install --progress-bar on -e '.[dev,bioimageio,napari]'
	touch $(STAMP)
	@echo "==> done: 'source $(VENV)/bin/activate' puts unetlab on PATH"

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m unetlab demo --out runs/demo
	@echo "(unetlab is $(VENV)/bin/unetlab; 'source $(VENV)/bin/activate' puts it on PATH)"

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -p no:cacheprovider

$(VENV)/.unetlab-bench: $(STAMP)
	$(PY) -m pip install monai
	$(PY) -m pip install --no-binary elasticdeform elasticdeform==0.5.1
	touch $@

bench: $(VENV)/.unetlab-bench
	$(PY) -m benchmarks $(BENCH)

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info
