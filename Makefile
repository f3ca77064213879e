# Two entry points (see README): `make demo` and `make test`. Both create .venv once and reuse
# it; the install is redone only when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.eossl-installed

.PHONY: demo test benchmark clean-venv browser

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch and torchvision first, alone: the pinned pair comes from the local wheel index
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

demo: $(STAMP)
	$(BIN)/eossl demo

# The HTML-report test renders the report in headless Chromium (Debian's package). Installed
# here when missing and apt-get can run (CI runs as root); elsewhere that one test is skipped.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not installed: the HTML report test will be skipped (apt-get install chromium)"

# One pytest-xdist worker per core (-n auto), each test file whole on one worker (tests of a
# file share module fixtures, e.g. test_benchmark's benchmark folder); coverage is combined.
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n auto --dist loadfile --cov=eossl --cov-report=term

benchmark: $(STAMP)
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/chips.py
	$(BIN)/python benchmarks/chips_shards.py

clean-venv:
	rm -rf $(VENV)
