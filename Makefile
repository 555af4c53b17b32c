# The two Quick start commands do all set-up themselves: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: quickstart test lint install clean debian-packages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# The pinned CPU torch goes in first: a bare torch requirement would pull CUDA wheels.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/bitsound train --recipe quickstart --out runs/quickstart

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

test: lint debian-packages
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
