# jobstream — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/jobstream/v1/*.proto)
GEN_DIR := client/jobstream/v1
HOST ?= 127.0.0.1
PORT ?= 50051
HTTP_PORT ?= 8080
DATA ?= ./data
CHROMIUM := /usr/bin/chromium
ZSH := /usr/bin/zsh

.PHONY: help install run test check lint typecheck proto proto-check proto-release bench clean faults test-tools

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo "make run listens on HOST=$(HOST) PORT=$(PORT) HTTP_PORT=$(HTTP_PORT), keeps its data in DATA=$(DATA);"
	@echo "set any of them on the command line, e.g. make run PORT=50052 DATA=/tmp/jobs"

# What serving needs (make run): the server extra only, no dev tools.
$(RUNTIME): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade 'pip>=25.1'
	$(PY) -m pip install -q -e '.[server]'
	touch $(RUNTIME)

# Everything else: every extra and the dev tools (tests, linters, generators).
$(STAMP): $(RUNTIME)
	$(PY) -m pip install -q -e '.[server,postgres]' --group dev
	touch $(STAMP)

install: $(STAMP) ## create the venv and install jobstream with every extra and the dev tools

run: $(RUNTIME) ## serve gRPC, the HTTP API and the dashboard, demo handlers, SQLite (HOST PORT HTTP_PORT DATA)
	@echo "gRPC on $(HOST):$(PORT); dashboard and HTTP API on http://$(HOST):$(HTTP_PORT)/"
	$(BIN)/jobstream serve --host $(HOST) --port $(PORT) --http-port $(HTTP_PORT) --data-dir $(DATA) --handlers jobstream.client.demo

# The dashboard tests drive Debian's chromium (never a browser download);
# the completion tests type TAB into a real zsh.
test-tools: ## install Debian's chromium and zsh for the browser and completion tests when missing (needs root)
	@test -x $(CHROMIUM) -a -x $(ZSH) || { apt-get update -qq && apt-get install -y -qq chromium zsh; }

proto: $(STAMP) ## regenerate client/jobstream/v1 from protos/
	rm -f $(GEN_DIR)/*_pb2*.py $(GEN_DIR)/*_pb2*.pyi
	PATH="$(abspath $(BIN)):$$PATH" $(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=client --mypy_out=client \
	  --grpc_python_out=client --mypy_grpc_out=client $(PROTOS)

proto-check: proto ## fail when the generated code differs from protos/
	@git diff --exit-code --stat -- $(GEN_DIR) || { echo "generated code is stale: run make proto and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- $(GEN_DIR))" || { git status --porcelain -- $(GEN_DIR); echo "untracked generated files: commit them"; exit 1; }

# The last released state of the contract: buf breaking compares protos/
# with it in make lint, so an incompatible change fails the build until a
# new state is released on purpose (make proto-release; see the README).
RELEASED := protos/released.binpb

lint: $(STAMP) ## ruff, the import layering contracts (import-linter), buf lint/format, and buf breaking against the released protos
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/buf lint
	$(BIN)/buf format --exit-code -d
	$(BIN)/buf breaking --against $(RELEASED)

proto-release: $(STAMP) ## record protos/ as the released contract that buf breaking checks against (commit the file)
	$(BIN)/buf build --exclude-source-info -o $(RELEASED)

typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

check: lint typecheck proto-check ## every static check

# Two processes that take tests from one queue and, once theirs is empty,
# take half of what the other has left (--dist worksteal): they end within
# about one test of each other. A file given whole to one process (loadfile)
# left the other idle for half a minute behind the longest files.
test: $(STAMP) test-tools check ## static checks, then the whole test suite (browser tests included; its ten slowest listed)
	$(BIN)/pytest -n 2 --dist worksteal --durations=10

faults: $(STAMP) ## the fault suite at full size; prints a table (scenario, figure, pass/fail)
	JOBSTREAM_FAULTS=full $(BIN)/pytest -p no:cacheprovider -o timeout=900 tests/faults

# The peers (huey, Procrastinate) are the bench group: part of dev, never of make run.
bench: $(STAMP) ## benchmarks against bare baselines and the peer job queues
	$(PY) -m pip install -q --group bench
	$(PY) -m bench

clean: ## remove the venv and caches (not ./data)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
