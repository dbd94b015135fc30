# The README's two commands: `make demo` and `make test`. Each creates the
# virtual environment and installs the project on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= results

.PHONY: install install-dev browser demo demo-fast test lint format clean

# The demo needs only the runtime dependencies; the tests and lint add the dev extras.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/safety-probes demo --out $(OUT)

demo-fast: install
	$(VENV)/bin/safety-probes demo --out $(OUT) --fast

lint: install-dev
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Headless chromium for the report-render test (tests/safety_probes/test_render.py):
# installed from Debian when we are root with apt-get; otherwise that test skips.
BROWSERS := chromium chromium-browser google-chrome
browser:
	@if (for b in $(BROWSERS); do command -v $$b >/dev/null 2>&1 && exit 0; done; exit 1); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium (Debian) for the report-render test"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && \
	    apt-get install -y -q chromium >/dev/null; } || \
	  echo "note: could not install chromium; the report-render test will skip"; \
	else echo "note: no chromium and no root apt-get to install it; the report-render test will skip"; fi

test: lint browser
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
