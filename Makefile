# Two commands set everything up on a fresh machine:
#   make demo   run the workflow on a small synthetic mountain with config.yaml
#   make test   pass the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SYSTEM_TOOLS := rsync ssh /usr/sbin/sshd dot flock
SYSTEM_PACKAGES := rsync openssh-server openssh-client graphviz util-linux

.PHONY: demo test test-fast lint format bench venv test-venv system-packages test-packages \
	clean-demo soak

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The test runner, the SMTP server of the alert tests, and the linters.
test-venv: $(VENV)/.test-installed

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

# Install the system tools when missing: with apt-get as root, else say how.
system-packages:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages for:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "missing:$$missing; run: sudo apt-get install $(SYSTEM_PACKAGES)"; exit 1; \
	  fi; \
	fi

# Chromium (the status page) and a single-node Slurm are for the tests only.
TEST_PACKAGES := chromium munge slurmctld slurmd slurm-client
test-packages:
	@{ command -v chromium && test -x /usr/sbin/slurmctld -a -x /usr/sbin/slurmd -a -x /usr/sbin/munged \
	  && command -v sbatch; } >/dev/null || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_PACKAGES) >/dev/null; \
	  else echo "test packages missing; run: sudo apt-get install $(TEST_PACKAGES)"; exit 1; fi; }

demo: venv system-packages clean-demo
	$(PY) -m scripts.mountain demo/mountain --nights 3 --exposures 4 --files 3 --size 2M --malformed
	$(PY) -m snakemake
	@echo
	$(PY) -m scripts.status --config config.yaml
	@echo
	@echo "Data landed in demo/archive/raw, the night backups in demo/tape; markers and logs are in demo/state."
	@echo "Status page: file://$(CURDIR)/demo/state/status/index.html (DESI's status files are beside it)."
	@echo "Run 'make demo' again to start over, or '$(PY) -m snakemake -n' to see nothing is left to do."

clean-demo:
	@if [ -d demo ]; then chmod -R u+w demo && rm -rf demo; fi

bench: venv system-packages
	@test -x /usr/bin/time || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq time >/dev/null; } || echo "GNU time missing (apt-get install time): peak RSS will include the bench's Python"
	$(PY) -m bench.run $(BENCH_ARGS)

# The fault soak (tests/fault_soak.py): seeded cron runs interleaved with faults, the
# invariants checked after every run. `make test` runs a short version of it.
SOAK_RUNS ?= 200
SOAK_SEED ?= 1
soak: test-venv system-packages
	$(PY) tests/fault_soak.py --runs $(SOAK_RUNS) --seed $(SOAK_SEED) $(SOAK_ARGS)

# Three test processes (pytest-xdist): much of a workflow test is waiting (rsync, ssh,
# Slurm's queue, Snakemake's own timers), so three overlap well on a 2-core machine
# (the whole suite: 17.6 min with three, 19.5 min with two, on 2 cores). The longest
# tests start first (tests/conftest.py); worksteal lets an idle process take the tests
# queued behind one of them.
TEST_WORKERS ?= 3
test: test-venv system-packages test-packages
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal
	$(MAKE) --no-print-directory lint

# The unit and small integration tests (no end-to-end workflow, Slurm or browser):
# a minute on a 2-core machine, for the edit-test loop.
test-fast: test-venv system-packages
	$(PY) -m pytest -m "not slow and not slurm and not browser"

lint: test-venv
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakefmt --check Snakefile rules/
	$(VENV)/bin/ruff check scripts tests bench

format: test-venv
	$(VENV)/bin/snakefmt Snakefile rules/
