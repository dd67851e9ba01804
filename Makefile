# cc-sidecar: `make demo` and `make test` set everything up from nothing but Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup lock test-latest image-reproducible demo test lint typecheck compile compile-deps clean-compiled unit unit-pure browser-deps redis-deps ts-deps chart-check chart-schema bench bench-deps soak docs clean format

setup: $(STAMP)

# The venv is exactly the lock (requirements/dev.txt, every file's sha256 checked), then the package
# itself, editable, with nothing resolved: tests/unit/test_lock.py fails when anything else is there.
$(STAMP): pyproject.toml requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-resolve the lock to the newest versions pyproject.toml's ranges allow (for Python 3.11 and
# newer, every platform), then re-install. Run it on purpose, read the diff, and commit it with the
# changes it needs; `make test-latest` shows first what the newest versions would break.
LOCK := $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes --upgrade \
	--custom-compile-command 'make lock'
lock: setup
	$(LOCK) --extra test pyproject.toml requirements/dev.in -o requirements/dev.txt
	$(LOCK) pyproject.toml -c requirements/dev.txt -o requirements/runtime.txt
	$(LOCK) pyproject.toml requirements/build.in -c requirements/dev.txt -o requirements/build.txt
	$(MAKE) setup

# Lint, types and the unit tests in a throwaway venv with the newest versions the ranges allow (no
# lock): the drift a fresh `pip install cc-sidecar` meets today, seen before it breaks anyone.
LATEST := $(shell mktemp -u /tmp/cc-sidecar-latest.XXXXXX)
test-latest:
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade -e '.[test]'
	$(LATEST)/bin/python -m pip freeze --exclude cc-sidecar > $(LATEST)/versions.txt
	@echo "test-latest: the newest versions are in $(LATEST)/versions.txt"
	$(LATEST)/bin/ruff check proxy tests bench setup.py
	$(LATEST)/bin/ruff format --check proxy tests bench setup.py
	$(LATEST)/bin/mypy
	CC_SIDECAR_PURE_PYTHON=1 CC_SIDECAR_UNLOCKED=1 $(LATEST)/bin/pytest -q -p no:cacheprovider tests/unit
	rm -rf $(LATEST)

demo: setup
	$(BIN)/cc-sidecar demo

lint: setup
	$(BIN)/ruff check proxy tests bench setup.py
	$(BIN)/ruff format --check proxy tests bench setup.py

typecheck: setup
	$(BIN)/mypy

# The request path compiled with mypyc, as the container image runs it (setup.py lists the modules).
# Rebuilt when any source changed: tests/conftest.py refuses to run on a stale build.
COMPILED_STAMP := build/.compiled-stamp
PROXY_SOURCES := $(shell find proxy -name '*.py')

compile: $(COMPILED_STAMP)

$(COMPILED_STAMP): $(STAMP) setup.py $(PROXY_SOURCES) | compile-deps
	CC_SIDECAR_COMPILE=1 $(BIN)/python setup.py --quiet build_ext --inplace --force
	mkdir -p build && touch $(COMPILED_STAMP)

# mypyc needs a C compiler (from Debian when missing, as root) and the interpreter's headers.
compile-deps:
	@command -v cc >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev; \
	  else echo "make compile needs a C compiler: apt-get install gcc (as root)"; exit 1; fi; }
	@$(BIN)/python -c "import pathlib, sys, sysconfig; header = pathlib.Path(sysconfig.get_paths()['include'], 'Python.h'); \
	  sys.exit(None if header.exists() else f'make compile needs {header}: apt-get install python3-dev (as root)')"

clean-compiled:
	rm -f proxy/*.so cc_sidecar__mypyc.*.so $(COMPILED_STAMP)

# Every test on the compiled build, then again on the Python source (what a plain
# `pip install` runs; CC_SIDECAR_PURE_PYTHON=1 imports it even with the compiled modules there).
# The suite mostly waits on sockets, timers and token lifetimes, not the CPU: it runs on
# PYTEST_WORKERS pytest-xdist workers (PYTEST_WORKERS=0 runs it in one process).
PYTEST_WORKERS ?= 4
unit: setup compile browser-deps redis-deps ts-deps
	$(BIN)/pytest -q -n $(PYTEST_WORKERS)

unit-pure: setup browser-deps redis-deps ts-deps
	CC_SIDECAR_PURE_PYTHON=1 $(BIN)/pytest -q -n $(PYTEST_WORKERS)

# The browser test drives Debian's Chromium; install it when missing (root, as in CI).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	  else echo "chromium missing and cannot install it: the browser test will be skipped"; fi; }

# The page script's declarations (proxy/static/cc-user.d.ts) are checked with tsc against the vendor's
# npm types: tests/typescript is a node project of its own, installed from its lock (npm ci); node and
# npm from Debian when missing (root, as in CI).
TS_STAMP := tests/typescript/node_modules/.installed-stamp

ts-deps: $(TS_STAMP)

$(TS_STAMP): tests/typescript/package.json tests/typescript/package-lock.json
	@if ! command -v npm >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; \
	  else echo "npm missing and cannot install it: the TypeScript check will be skipped"; exit 0; fi; \
	fi; \
	cd tests/typescript && npm ci --no-audit --no-fund --loglevel=error && touch $(CURDIR)/$(TS_STAMP)

# The shared token store's tests start Debian's redis-server and redis-sentinel (their own ports and
# temp dirs, never the system service); installed when missing (root, as in CI).
redis-deps:
	@command -v redis-server >/dev/null 2>&1 && command -v redis-sentinel >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-sentinel; \
	  else echo "redis-server/redis-sentinel missing and cannot install them: the Redis tests will be skipped"; fi; }

format: setup
	$(BIN)/ruff format proxy tests bench setup.py
	$(BIN)/ruff check --fix proxy tests bench setup.py

test: lint typecheck unit unit-pure chart-check

# Container image and Helm chart: hadolint, helm lint/template/schema-validation of every
# helm/cc-sidecar/ci scenario, rendered configs through check-config. Pinned tools land in .tools/.
chart-check: setup
	tools/chart-check.sh

# The Dockerfile replayed twice: both builds must give the same wheel (SOURCE_DATE_EPOCH). Not part
# of make test (a second mypyc build); run it when the Dockerfile or setup.py changes.
image-reproducible: setup
	$(BIN)/python tools/image_replay.py --builds 2 --check

# nginx (the baseline proxy) and wrk (the load generator) come from Debian; installed when missing.
bench: setup compile bench-deps
	$(BIN)/python bench/run.py

bench-deps:
	@command -v nginx >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light wrk; \
	  else echo "bench needs nginx and wrk: apt-get install nginx-light wrk (as root)"; exit 1; fi; }

# The load/soak run of issue 7 (bounded; --minutes to shorten); not part of make test.
soak: setup compile
	$(BIN)/python bench/soak.py

# helm/cc-sidecar/values.schema.json: its `config` part comes from the config models (a test and
# chart-check fail when it is stale).
chart-schema: setup
	$(BIN)/python tools/values_schema.py

# docs/configuration.md is generated from the config models (a test checks it is current).
docs: setup chart-schema
	$(BIN)/cc-sidecar config-reference > docs/configuration.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .tools build tests/typescript/node_modules proxy/*.so cc_sidecar__mypyc.*.so
