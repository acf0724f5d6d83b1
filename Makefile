# Both entry points create or refresh .venv themselves, with exactly the versions in
# requirements.lock (scripts/venv.sh); the stamp makes a no-change run instant.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock
PYTEST_ARGS ?=
# the lock: every extra, every platform (markers), the project's Python
COMPILE = $(VENV)/bin/python -m uv pip compile pyproject.toml --extra dev --extra scale \
  --universal --python-version 3.11 --no-emit-index-url --no-emit-find-links --quiet

.PHONY: venv run test lint serve bench clean chromium lock test-latest

$(STAMP): pyproject.toml $(LOCK) scripts/venv.sh
	PY=$(PY) bash scripts/venv.sh $(VENV) $(LOCK)
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

# Upgrading is one deliberate step: `make lock` re-resolves requirements.lock to the newest
# versions pyproject.toml allows; `make test-latest` runs the suite on them in a throw-away
# venv (.venv-latest) first and prints what moved. Commit the new lock when it is green.
lock: venv
	$(COMPILE) --upgrade -o $(LOCK)
	rm -f $(STAMP)

test-latest: venv chromium
	$(COMPILE) --upgrade -o .latest.lock
	PY=$(PY) bash scripts/venv.sh .venv-latest .latest.lock
	@echo "versions that differ from $(LOCK):"
	@diff <(grep -E '^[A-Za-z0-9]' $(LOCK)) <(grep -E '^[A-Za-z0-9]' .latest.lock) \
	  | sed -n 's/^> /  now /p; s/^< /  was /p' || true
	.venv-latest/bin/ruff check .
	.venv-latest/bin/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

serve: venv
	bash scripts/serve.sh

bench: venv
	$(VENV)/bin/python -m bench.run_all

clean:
	rm -rf .venv-latest .latest.lock work mlruns mlflow.db mlartifacts checkpoints samples .pytest_cache
