# The README's commands. Each target installs what is missing first, so a fresh clone
# needs nothing but Python, pip and a C++ compiler.
PYTHON ?= python3
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=
STAMP := .make/installed
# the test extras (pytest, Triton) and diffusers, which tests use: `make test` only
TEST_STAMP := .make/installed-test
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cpp csrc/cuda/*.h)

.PHONY: install demo test test-all bench lint clean gpu-check wheel

install: $(STAMP)

# Keep an existing torch (a GPU machine's CUDA build); otherwise take the pinned CPU build.
# The runtime dependencies only: what `make demo` needs.
$(STAMP): $(SOURCES)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_PIN)"
	$(PYTHON) -m pip install --quiet "setuptools>=69" wheel ninja numpy
	$(PYTHON) -m pip install --no-build-isolation -e .
	@mkdir -p $(dir $@) && touch $@

# Its own stamp, so that `make test` after `make demo` still installs the test extras;
# the extras' requirements are read from pyproject.toml (one list), installed without
# rebuilding the package.
$(TEST_STAMP): $(STAMP) pyproject.toml
	@# tomllib is Python >= 3.11; pip's own copy of tomli reads it on 3.10
	$(PYTHON) -c "exec('try: import tomllib\nexcept ImportError: from pip._vendor import tomli as tomllib'); \
	x = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; \
	print('\n'.join(x['test'] + x['diffusers']))" > $(dir $@)test-requirements.txt
	$(PYTHON) -m pip install -r $(dir $@)test-requirements.txt
	@touch $@

demo: install
	$(PYTHON) -m pydiffgen demo --out runs/demo

test: $(TEST_STAMP)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-all: $(TEST_STAMP)
	$(PYTHON) -m pytest -m "" $(PYTEST_ARGS)

bench: install
	@# the "bench" extra (faiss-cpu, a peer of bench_knn), without rebuilding the package
	@$(PYTHON) -c "import faiss" 2>/dev/null || $(PYTHON) -m pip install --quiet "faiss-cpu>=1.8"
	$(PYTHON) benchmarks/run_all.py

# Not in the default suite: a venv with the GPU machines' versions (Python 3.12, torch 2.11
# + CUDA 13.0, Triton 3.6; ~2.7 GB of wheels, downloaded once) compiles every kernel and
# builds and imports the full CUDA extension, without a GPU. GPU_VENV picks the venv.
gpu-check:
	bash tools/gpu_check.sh

# dist/pydiffgen-*.whl: with the CUDA kernels for TORCH_CUDA_ARCH_LIST (8.0;9.0a) where this
# Python's torch has CUDA and nvcc exists, the CPU wheel otherwise; then a fresh venv
# (sharing this Python's packages, torch included) installs it and reports its backends.
wheel:
	bash tools/wheel.sh $(PYTHON)

lint:
	$(PYTHON) -m ruff check pydiffgen kernels tests benchmarks tools

clean:
	rm -rf build .make pydiffgen/_C*.so *.egg-info
