# The two commands of the README, and what they need. Every target is idempotent: a second run
# installs nothing unless requirements.lock or rehearsal/package-lock.json changed.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: rehearse test lint pytest setup bench
.DEFAULT_GOAL := test

## make rehearse — the main job: a full rehearsal of the emergency rollback on the local stack.
rehearse: setup
	@echo "make rehearse: not implemented yet: it needs the rehearsal stack (issue 5), the schema and flag modules (issues 3, 4) and the rollback playbook (issue 6)." >&2
	@exit 1

## make bench — the benchmarks: writes bench/RESULTS.md and bench/*.png (a quicker run:
## make bench BENCH_ARGS="--runs 3 --fanout 1,10,50,100"; see python -m bench --help).
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

## make test — lint and every test.
test: setup lint pytest

setup: $(VENV)/.installed rehearsal/node_modules/.installed .cache/prometheus.installed

$(VENV)/.installed: requirements.lock
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	@touch $@

rehearsal/node_modules/.installed: rehearsal/package-lock.json
	cd rehearsal && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Debian's Prometheus, for the rehearsal stack's monitoring (no systemd here: the stack starts it).
.cache/prometheus.installed:
	@mkdir -p .cache
	@command -v prometheus >/dev/null || { \
	  command -v apt-get >/dev/null || { echo "setup: Prometheus is missing and this is not Debian/Ubuntu: install prometheus (2.x) and rerun." >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@touch $@

lint: setup
	ruff check .
	ruff format --check .
	yamllint --strict .
	ansible-lint --profile production --offline -q

pytest: setup
	pytest
