# The README's commands. Each target installs what is missing first, so a fresh clone
# needs nothing but Python, pip and a C++ compiler.
PYTHON ?= python3
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=
STAMP := .make/installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cpp csrc/cuda/*.h)

.PHONY: install demo test test-all bench lint clean

install: $(STAMP)

# Keep an existing torch (a GPU machine's CUDA build); otherwise take the pinned CPU build.
$(STAMP): $(SOURCES)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_PIN)"
	$(PYTHON) -m pip install --quiet "setuptools>=69" wheel ninja numpy
	$(PYTHON) -m pip install --no-build-isolation -e ".[test,diffusers]"
	@mkdir -p $(dir $@) && touch $@

demo: install
	$(PYTHON) -m pydiffgen demo --out runs/demo

test: install
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-all: install
	$(PYTHON) -m pytest -m "" $(PYTEST_ARGS)

bench: install
	@# the "bench" extra (faiss-cpu, a peer of bench_knn), without rebuilding the package
	@$(PYTHON) -c "import faiss" 2>/dev/null || $(PYTHON) -m pip install --quiet "faiss-cpu>=1.8"
	$(PYTHON) benchmarks/run_all.py

lint:
	$(PYTHON) -m ruff check pydiffgen kernels tests benchmarks

clean:
	rm -rf build .make pydiffgen/_C*.so *.egg-info
