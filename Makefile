# The two commands of the README: `make demo` and `make test`. Each creates the
# local virtual environment .venv when it is missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint doc bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[tests,docs,distributed]"
	touch $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m skdnc --output skdnc_output

LINTED := skdnc tests examples benchmarks doc/conf.py conftest.py

test: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(PY) -m pytest -q -n 2 --dist loadfile
	$(MAKE) doc

doc: $(STAMP)
	rm -rf doc/_build doc/auto_examples doc/generated
	$(VENV)/bin/sphinx-build -W --keep-going -b html doc doc/_build/html

# On a machine with a CUDA device: the gpu-marked tests, then Deep RFM at the
# paper's size (n = 50,000, L = 18) on one GPU.
gpu-check: $(STAMP)
	$(PY) -m pytest -q -m gpu -p no:xdist tests
	$(PY) benchmarks/bench_gpu_deep_rfm.py --tf32

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[benchmarks]"
	$(PY) benchmarks/bench_rfm.py --check
	$(PY) benchmarks/bench_scale.py --check

clean:
	rm -rf $(VENV) doc/_build doc/auto_examples doc/generated
