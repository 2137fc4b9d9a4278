# The two commands: `make test` and `make bench`. Each sets up .venv on first use (torch, tools,
# arkernels built from this checkout) and is safe to rerun.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test bench setup clean
setup:
	ARKERNELS_VENV=$(VENV) bash scripts/setup_env.sh

test: setup
	PY=$(PY) bash scripts/run_tests.sh

bench: setup
	$(PY) -m bench.report

clean:
	rm -rf build
