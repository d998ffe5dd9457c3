# Two commands for a fresh clone (README): `make demo` and `make test`.
# Both bootstrap the project-local .venv first (idempotent: a second run skips what is done).
PY := .venv/bin/python
# test processes (pytest-xdist); each takes one test file at a time, so a file's trained tiny models are built once
TEST_WORKERS ?= 2

.PHONY: env demo test clean-demo

env:
	bash scripts/bootstrap.sh

demo: env
	bash scripts/demo.sh

test: env
	$(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile tests

clean-demo:
	rm -rf data/toy runs/demo
