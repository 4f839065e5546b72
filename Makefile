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

.PHONY: rehearse test lint pytest molecule setup bench
.DEFAULT_GOAL := test

## make rehearse — the main job: a full rehearsal of the emergency rollback on the local stack
## (molecule's default scenario: stack up, deploy.yml, rollback.yml under load, the rollback again,
## the checks, stack down), then what it did: each step, the load, the notification, the audit record.
rehearse: setup
	@out=$$(molecule reset -s default 2>&1) || { echo "$$out" >&2; exit 1; }  # an earlier run's molecule state
	@rc=0; molecule test -s default || rc=$$?; \
	  PYTHONPATH=molecule/resources $(BIN)/python -m drills report default || true; \
	  if [ $$rc -eq 0 ]; then echo "make rehearse: every promise of the default drill held."; \
	  else echo "make rehearse: the rehearsal FAILED (molecule exit $$rc): see above." >&2; fi; exit $$rc

## make molecule — every drill of molecule/ on one shared rehearsal stack; figures in
## .run/molecule/results/<scenario>.json (one drill: make molecule MOLECULE_ARGS="-s flag-outage").
molecule: setup
	@out=$$(molecule reset -s default 2>&1) || { echo "$$out" >&2; exit 1; }  # an earlier run's molecule state
	molecule test $(or $(MOLECULE_ARGS),--all)

## make bench — the benchmarks: writes bench/RESULTS.md and bench/*.png (a quicker run:
## make bench BENCH_ARGS="--runs 3 --fanout 1,10,100"; see python -m bench --help).
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

## make test — lint, every test and every molecule drill.
test: setup lint pytest molecule

setup: $(VENV)/.installed rehearsal/node_modules/.installed .cache/prometheus.installed .cache/ci-tools.installed

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

# Debian's Groovy (2.4, the Groovy Jenkins runs Pipelines with; on Java 17) and shellcheck, for the
# Jenkinsfile's checks (tests/tooling/test_ci_jenkins.py).
.cache/ci-tools.installed:
	@mkdir -p .cache
	@command -v groovy >/dev/null && command -v shellcheck >/dev/null && test -e /usr/lib/jvm/default-java || { \
	  command -v apt-get >/dev/null || { echo "setup: groovy or shellcheck is missing and this is not Debian/Ubuntu: install groovy (2.4), a Java 17 runtime and shellcheck, and rerun." >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends groovy shellcheck default-jre-headless >/dev/null; }
	@touch $@

lint: setup
	ruff check .
	ruff format --check .
	yamllint --strict .
	ansible-lint --profile production --offline -q

pytest: setup
	pytest
