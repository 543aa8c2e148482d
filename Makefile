# erlpy — thin wrapper over apt (first run only), rebar3, pip/pytest and mix.
#   make test    install what is missing, build, run every suite
#   make demo    the token-streaming demo
#   make demo-web  the same in a browser: tokens over Server-Sent Events (examples/web)
#   make bench   the benchmarks of docs/performance.md
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
export ERLPY_PYTHON ?= $(PY)
DEBS := erlang-nox erlang-dev erlang-eunit erlang-common-test erlang-dialyzer erlang-proper erlang-proper-dev \
        erlang-tools rebar3 elixir python3-venv
# python3-venv: Debian's /usr/bin/python3 builds the virtualenvs of erlpy_venv_SUITE.
# The browser that test/python/test_web_demo.py drives (headless) through the web demo.
BROWSER_DEBS := chromium

.PHONY: all deps deps-browser venv compile test test-erlang test-ct test-eunit test-python \
        test-elixir lint demo demo-web bench clean

all: compile

# Debian packages, installed only when something is missing (CI machines start bare).
define install-debs
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

deps:
	$(call install-debs,$(DEBS))

deps-browser:
	$(call install-debs,$(BROWSER_DEBS))

# The project virtualenv, from pyproject.toml; rebuilt when pyproject.toml changes.
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@echo "==> creating $(VENV)"
	@python3 -m venv $(VENV) 2>/dev/null || { apt-get install -y -qq python3-venv >/dev/null && python3 -m venv $(VENV); }
	@$(VENV)/bin/pip install -q --upgrade pip >/dev/null
	@$(VENV)/bin/pip install -q -e '.[test,dev]'
	@touch $@

compile: deps
	@rebar3 compile

test: deps deps-browser venv compile
	@status=0; \
	$(MAKE) --no-print-directory test-eunit  || status=1; \
	$(MAKE) --no-print-directory test-ct     || status=1; \
	$(MAKE) --no-print-directory test-python || status=1; \
	$(MAKE) --no-print-directory test-elixir || status=1; \
	$(MAKE) --no-print-directory lint        || status=1; \
	if [ $$status = 0 ]; then echo "==> all suites passed"; else echo "==> SOME SUITES FAILED"; fi; \
	exit $$status

# Colour codes out, one summary line per suite in; full logs in _build/*.log.
PLAIN := sed -u 's/\x1b\[[0-9;]*m//g'

test-eunit:
	@echo "==> EUnit + PropEr"
	@mkdir -p _build; rebar3 eunit --dir test/erlang 2>&1 | $(PLAIN) | tee _build/eunit.log \
	  | grep -aE "^[0-9]+ tests, |Failed:|\*failed\*" | tail -n 20; \
	  test $${PIPESTATUS[0]} = 0

test-ct:
	@echo "==> Common Test"
	@mkdir -p _build; rebar3 ct 2>&1 | $(PLAIN) | tee _build/ct.log \
	  | grep -aE "^%%%|^(Failed|All|Skipped) .*tests?|TEST COMPLETE" | cut -c1-200 | tail -n 60; \
	  test $${PIPESTATUS[0]} = 0

# mix test at the top: the ExUnit suites of test/elixir (Mix builds erlpy into _build/mix;
# no Hex, no rebar3, no network).
test-elixir:
	@echo "==> ExUnit"
	@mkdir -p _build; LC_ALL=C.UTF-8 MIX_ENV=test HEX_OFFLINE=1 mix test 2>&1 | $(PLAIN) | tee _build/exunit.log \
	  | grep -aE "^([0-9]+ doctests?, )?[0-9]+ tests?, [0-9]+ failures?|^ +[0-9]+\) test |^\*\* \(" | cut -c1-200 | tail -n 20; \
	  test $${PIPESTATUS[0]} = 0

test-python:
	@echo "==> pytest"
	@$(VENV)/bin/pytest -q test/python 2>&1 | tail -n 15; test $${PIPESTATUS[0]} = 0

lint:
	@echo "==> mypy --strict, ruff, xref, dialyzer"
	@set -o pipefail; \
	 $(VENV)/bin/mypy --strict python/erlpy && \
	 $(VENV)/bin/ruff check python/erlpy test/python bench && \
	 rebar3 xref && rebar3 dialyzer 2>&1 | tail -n 5

demo: deps venv compile
	@escript examples/demo.escript

# The web demo on a free port (or PORT=8080); prints the URL, Ctrl-C stops it.
demo-web: deps venv compile
	@escript examples/web/web_demo.escript $(PORT)

# Flags for bench/bench.escript (its header lists them), e.g.
#   make bench BENCH_ARGS="--quick --pool-opts '#{poll_us => 0}'"
bench: deps venv compile
	@echo "==> codec (Erlang)"; escript bench/codec_bench.escript
	@echo "==> codec (Python)"; $(PY) bench/codec_bench.py
	@echo "==> bridge"; escript bench/bench.escript $(BENCH_ARGS)
	@echo "==> batched function"; escript bench/batched_bench.escript --unbatched-calls 200

clean:
	rm -rf _build $(VENV)
