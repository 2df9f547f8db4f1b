# aubench: `make demo` runs the main job on an embedded default, `make test` runs the tests.
# Both create .venv and install the project into it when needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# The project's extras: test (the suite's tools); add faces for --landmarks detect (dlib), whose
# tests skip without it: make test EXTRAS=test,faces
EXTRAS ?= test
comma  := ,
# one stamp per set of extras: asking for another set installs it
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: venv install build demo test test-all bench bench-summary docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# torch first (the extension builds against the installed torch), then the project.
# build_config.py decides CPU or CPU+CUDA kernels; it speaks up only when a CUDA toolkit is
# left unused (pip -q would hide the line setup.py prints).
$(STAMP): $(PY) pyproject.toml setup.py build_config.py
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q ninja pybind11
	$(PY) build_config.py --notice
	$(PIP) install -q --no-build-isolation -e '.[$(EXTRAS)]'
	touch $@

venv: $(STAMP)
install: $(STAMP)

# Rebuild the extension in place after editing csrc/ (AUBENCH_CUDA=0 for a fast CPU-only build).
build: $(STAMP)
	$(PY) build_config.py
	$(PY) setup.py build_ext --inplace

# The demo's install brings the faces extra: its last step, `aubench predict` on a real video,
# detects faces with dlib.
demo:
	$(MAKE) --no-print-directory install EXTRAS=test,faces
	$(VENV)/bin/aubench demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-json=benchmarks/results/latest.json

bench-summary: $(STAMP)
	$(PY) benchmarks/summary.py

# Rebuild the generated tables and plots of README.md and docs/ from benchmarks/results/*.json
# (tests/test_docs.py fails when they differ), and the training-curves picture.
docs: $(STAMP)
	$(PY) docs/make_docs.py

clean:
	rm -rf build aubench/_C*.so *.egg-info
