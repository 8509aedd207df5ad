# Two commands do everything on a fresh machine:
#   make demo   set up .venv, then train ALMRR on the embedded demo data and test it
#   make test   set up .venv, then run the test suite (the command CI runs)
PY := .venv/bin/python

.PHONY: setup demo test bench bench-speed lint
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m apps.almrr train

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m pytest -q benchmarks --benchmark-columns=min,median,mean,rounds

bench-speed: setup
	$(PY) benchmarks/speed.py

lint: setup
	$(PY) -m ruff check .
