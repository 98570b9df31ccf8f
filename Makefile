# pix2pixhd_fast: set-up, build and checks. `make test` and `make demo` work on a fresh machine.
#
#   make install   .venv with torch + dependencies, then the C++/CUDA extension (editable install)
#   make test      install, lint, the C++ (LibTorch/ctest) build and test, and the Python test suite
#   make demo      install, then the demo job: synthetic data, a short training, test images + PSNR (demo_out/)
#   make demo-seeds  the demo for seeds 0, 1, 2 and the instance-feature PSNR gain's spread (~35 min on 2 cores)
#   make bench     every benchmark here (pytest-benchmark, operators, training step, scaling; 5-11 min on 2 cores),
#                  results in benchmarks/results/cpu-<n>core*.json, then benchmarks/REPORT.md + plots + README section
#   make bench-train  training step (n), (a)-(e) + ablation, G/D fwd/bwd rows, profile (CPU, <= 8 min on 2 cores)
#   make bench-infer  generator inference latency per backend (CPU, ~1 min)
#   make bench-report regenerate REPORT.md, plots and README's performance section from the results files only
#
# CUDA kernels are compiled whenever nvcc and a CUDA build of torch exist (no GPU needed).
# TORCH_CUDA_ARCH_LIST picks the GPU archs (default here: Ampere + Hopper with PTX, to keep CI short;
# setup.py's own default, used by a plain `pip install`, covers Turing..Blackwell).

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX
CUDA_HOME ?= /usr/local/cuda
export TORCH_CUDA_ARCH_LIST CUDA_HOME

DEPS := numpy pybind11 ninja pytest pytest-benchmark pillow tqdm scikit-learn tensorboard onnx onnxruntime onnxscript onnxconverter-common \
        ruff expecttest matplotlib
SOURCES := setup.py pyproject.toml $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)

.PHONY: all venv install test pytest lint cpp-test demo demo-seeds bench bench-train bench-infer bench-report clean

all: install

$(VENV)/.deps: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q $(DEPS)
	touch $@

venv: $(VENV)/.deps

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	mkdir -p build
	@echo "building the extension (log: build/pip-build.log)"
	$(PIP) install --no-build-isolation --no-deps -v -e . > build/pip-build.log 2>&1 || \
	  { tail -n 80 build/pip-build.log; echo "extension build FAILED (full log: build/pip-build.log)"; exit 1; }
	grep -A6 "pix2pixhd_fast build" build/pip-build.log || true
	$(PY) -c "import pix2pixhd_fast as p, json; i = p.build_info(); print(json.dumps(i, indent=1)); assert i['ops_loaded'], i['error']"
	touch $@

install: $(VENV)/.built

lint: $(VENV)/.deps
	$(VENV)/bin/ruff check pix2pixhd_fast tests benchmarks scripts setup.py

cpp-test: $(VENV)/.deps $(SOURCES)
	cmake -S . -B build/cmake -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

pytest: install
	$(PY) -m pytest tests -q

test: install lint cpp-test pytest

demo: install
	$(PY) -m pix2pixhd_fast.cli demo --out demo_out

demo-seeds: install
	$(PY) -m pix2pixhd_fast.demo --seeds 0,1,2 --out demo_seeds_out

bench: install
	$(PY) benchmarks/run_all.py --device cpu --machine cpu-$$(nproc)core

bench-train: install
	$(PY) benchmarks/run_train.py --device cpu --profile --json benchmarks/results/cpu-$$(nproc)core-train.json \
	  --markdown benchmarks/results/cpu-$$(nproc)core-train.md

bench-infer: install
	$(PY) benchmarks/run_infer.py --device cpu --json benchmarks/results/cpu-$$(nproc)core-infer.json \
	  --markdown benchmarks/results/cpu-$$(nproc)core-infer.md

bench-report: $(VENV)/.deps
	$(PY) benchmarks/report.py

clean:
	rm -rf build pix2pixhd_fast/_C*.so *.egg-info $(VENV)/.built
