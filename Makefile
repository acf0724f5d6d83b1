# Both entry points create or refresh .venv themselves; the stamp makes a no-change run instant.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv run test lint serve bench clean chromium

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[dev,scale]'
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(VENV)/bin/audio-wgan run

test: venv chromium
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# tests/test_gallery_browser.py opens the gallery in Chromium; tests install nothing, so on CI
# (CI=true, as root) Debian's chromium is installed here when it is missing
chromium:
	@if [ "$${CI:-}" = true ] && [ "$$(id -u)" = 0 ] && ! command -v chromium >/dev/null 2>&1 \
	    && command -v apt-get >/dev/null 2>&1; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

lint: venv
	$(VENV)/bin/ruff check .

serve: venv
	bash scripts/serve.sh

bench: venv
	$(VENV)/bin/python -m bench.run_all

clean:
	rm -rf work mlruns mlflow.db mlartifacts checkpoints samples .pytest_cache
