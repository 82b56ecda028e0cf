# kcg-operator — `make test` sets up whatever is missing, then runs every test.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STACK := $(PYTHON) stack/localstack.py

.PHONY: all test unit lint setup up down env status clean crds chart-crds run demo \
        kind-e2e bench-scaling bench-outbox bench-sweep bench-rebalance bench-failover images

all: test

$(VENV)/.installed: pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || \
	  { echo "kcg: Python 3.11+ is required as '$(PY)' (set PY=/path/to/python3.11)"; exit 2; }
	@$(PY) -m venv $(VENV) 2>/dev/null || \
	  { echo "kcg: cannot create a virtualenv: apt-get install python3-venv"; exit 2; }
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

## setup: the Python env and every program of the local stack (cached by version)
setup: $(VENV)/.installed
	@$(STACK) setup

## test: every test (unit, integration, e2e) against the real programs
test: setup
	$(VENV)/bin/pytest

## unit: the fast pure-logic tests only
unit: $(VENV)/.installed
	$(VENV)/bin/pytest -m unit

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check operator tests stack benchmarks hack examples
	$(VENV)/bin/mypy

## crds: regenerate crds/ from the API models (and the chart's copy)
crds: $(VENV)/.installed
	$(VENV)/bin/kcg crd --output crds/kcg.dev_kafkaconsumergroups.yaml
	$(MAKE) -s chart-crds

chart-crds:
	rm -f charts/kcg-operator/crds/*.yaml && cp crds/*.yaml charts/kcg-operator/crds/

## run: the operator against the current kube context, or the local stack when none
run: setup
	@hack/run.sh

## demo: a burst scales a group up (never past its partitions) and back down
demo: setup
	$(PYTHON) hack/demo.py

## kind-e2e: the e2e suite on kind (needs Docker; not available on our build machines)
kind-e2e: $(VENV)/.installed
	hack/kind-e2e.sh

## bench-*: benchmarks that print a table and, last, one JSON line
# SCENARIOS=examples/scenarios-heldout: the scenarios the policy was not tuned on.
SCENARIOS ?= examples/scenarios
bench-scaling: $(VENV)/.installed
	$(PYTHON) -m kcg_operator.scaling.bench --scenarios $(SCENARIOS) --plot-dir benchmarks/out/scaling

# OBJECTS=10000 for the large run; the one-client-per-object baseline stays at 1 000.
OBJECTS ?= 1000
bench-sweep: setup
	$(PYTHON) benchmarks/bench_sweep.py --objects $(OBJECTS)

bench-outbox: setup
	$(PYTHON) benchmarks/bench_outbox.py

# bench-failover needs the node: it uses the running stack (make up).
bench-failover: setup
	$(PYTHON) benchmarks/bench_failover.py

# bench-rebalance needs the node: it uses the running stack (make up).
bench-rebalance: setup
	$(PYTHON) benchmarks/bench_rebalance.py

## up/down: the local stack (control plane, the node, Kafka, PostgreSQL)
up: setup
	@$(STACK) up >/dev/null
	@echo 'kcg: stack is up; point your shell at it with: eval "$$(make -s env)"'

## images: rebuild the images from the working tree and load them on the running node
images: $(VENV)/.installed
	@$(STACK) images

down:
	@if [ -x $(PYTHON) ]; then $(STACK) down; fi

env:
	@$(STACK) env

status:
	@$(STACK) status

clean: down
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
	find . -name __pycache__ -prune -exec rm -rf {} +
