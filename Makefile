# keyfront: `make run` tries it out, `make test` proves it. Both set up everything they
# need on a fresh machine (a virtualenv; redis-server, promtool, systemd-analyze and chromium
# for the tests, from Debian's packages: `make check-tools`).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/local.yaml

.PHONY: run test lint format check-tools install install-test bench clean

run: install
	@CONFIG=$(CONFIG) BIN=$(BIN) deploy/run-local.sh

test: install-test check-tools lint
	$(BIN)/pytest

lint: install-test
	$(BIN)/ruff check proxy tests bench
	$(BIN)/ruff format --check proxy tests bench
	$(BIN)/mypy --strict proxy

format: install-test
	$(BIN)/ruff format proxy tests bench
	$(BIN)/ruff check --fix proxy tests bench

# keyfront against nginx, side by side (SPEC section 12; docs/performance.md). Installs
# nginx, wrk and redis-server with apt-get when missing. BENCH_ARGS=--quick: 1 round.
bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The suite starts its own redis-server on a free port; it only needs the binary.
# chromium is Debian's, driven headless by Playwright (tests/browser.py).
check-tools:
	@command -v redis-server >/dev/null || deploy/install-test-tool.sh redis-server redis-server
	@command -v promtool >/dev/null || deploy/install-test-tool.sh promtool prometheus
	@command -v systemd-analyze >/dev/null || deploy/install-test-tool.sh systemd-analyze systemd
	@command -v chromium >/dev/null || deploy/install-test-tool.sh chromium chromium

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
