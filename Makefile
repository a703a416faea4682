# Thin wrapper over CMake for the README's commands. `make run` (the daemon with its defaults),
# `make test`, `make demo` (the engine on its own), `make bench-ns`, `make bench-e2e`.
BUILD      ?= build
ASAN_BUILD ?= build-asan
BUILD_TYPE ?= RelWithDebInfo
CMAKE_ARGS ?=
JOBS       ?= $(shell nproc)
PYTHON     := /usr/bin/python3

.PHONY: all deps configure build run demo test test-asan bench-ns bench-e2e bench-gpu clean

all: build

deps:
	@deploy/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j$(JOBS)

# The daemon on 127.0.0.1:50051 with state in ./orthod-data; Ctrl-C drains and stops it.
# Extra flags: make run ARGS="--log-level debug".
run: build
	./$(BUILD)/orthod $(ARGS)

demo: build
	./$(BUILD)/orthod-demo

# Every test: the normal build (unit suites, float64 reference trajectories), then the unit
# suites again under AddressSanitizer + UndefinedBehaviorSanitizer.
test: build test-asan
	ctest --test-dir $(BUILD) --output-on-failure -j$(JOBS)

test-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	       -DORTHOD_SANITIZE=address,undefined $(CMAKE_ARGS) >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --test-dir $(ASAN_BUILD) -L unit --output-on-failure -j$(JOBS)

bench-ns: build
	$(PYTHON) tests/bench/bench_ns.py --bin $(BUILD)/bench_ns

# GPT-2 small through the daemon and one C client vs the floor (loopback TCP, compute-only).
# Extra flags: make bench-e2e ARGS="--layers 4 --steps 3".
bench-e2e: build
	./$(BUILD)/bench_e2e --orthod ./$(BUILD)/orthod $(ARGS)

# Newton–Schulz on the GPU: orthod's CUDA backend vs PyTorch on the same device, TFLOP/s vs the
# measured cuBLAS GEMM rate (docs/CUDA.md). Without a CUDA device it says so and exits 0.
# Extra flags: make bench-gpu ARGS="--quick" or ARGS="--reps 20 4096x4096".
bench-gpu: build
	./$(BUILD)/bench_gpu --torch tests/bench/bench_gpu_torch.py --python $(PYTHON) $(ARGS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
