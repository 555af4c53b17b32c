# The two Quick start commands do all set-up themselves: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: quickstart test lint install clean debian-packages mcu-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# The pinned CPU torch goes in first: a bare torch requirement would pull CUDA wheels.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# A binarized model end to end: train (accuracy on held-out recording locations), its complexity,
# the packed model for the C engine, and the engine's labels against PyTorch's on every held-out clip.
QUICKSTART := runs/quickstart
quickstart: $(STAMP)
	$(BIN)/bitsound train --recipe quickstart-1bit --out $(QUICKSTART)
	$(BIN)/bitsound complexity --model $(QUICKSTART)/model.pt
	$(BIN)/bitsound export --model $(QUICKSTART)/model.pt --out $(QUICKSTART)/model.bsnn
	$(BIN)/python benchmarks/engine_parity.py --model $(QUICKSTART)/model.pt --engine $(QUICKSTART)/model.bsnn --held-out

lint: $(STAMP)
	$(BIN)/ruff check .

# Debian packages some tests need: lame encodes the VBR MP3s without an Info frame that
# tests/test_audio_truncation.py needs (libsndfile cannot write them); chromium opens the HTML
# report in the browser test. CI runs as root on a fresh Debian machine; elsewhere a failed install
# only makes those tests skip, saying why.
DEBIAN_TEST_PACKAGES := lame chromium
debian-packages:
	@missing=""; for p in $(DEBIAN_TEST_PACKAGES); do \
	  command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) \
	    >/dev/null 2>&1 || echo "note: could not install Debian's$$missing (needs root and apt-get);" \
	    "the tests that need them will be skipped"; fi

# The Cortex-M4 toolchain and QEMU for bitsound deploy and its tests (tests/test_deploy_qemu.py):
# arm-none-eabi-gcc with newlib, qemu-system-arm (mps2-an386). As above, a failed install only
# makes those tests skip, saying why.
MCU_PACKAGES := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
mcu-deps:
	@if ! command -v arm-none-eabi-gcc >/dev/null 2>&1 || ! command -v qemu-system-arm >/dev/null 2>&1 || \
	  [ ! -f "$$(arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 \
	     --specs=nano.specs -print-file-name=libc_nano.a 2>/dev/null)" ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(MCU_PACKAGES)) \
	    >/dev/null 2>&1 || echo "note: could not install Debian's $(MCU_PACKAGES) (needs root and" \
	    "apt-get); the Cortex-M4 tests will be skipped"; fi

test: lint debian-packages mcu-deps
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
