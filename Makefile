# faceledger: `make demo` runs the main job, `make test` runs the tests.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LFW    ?= $(abspath ../shared/data/lfw)
DATA   ?= faceledger-data
DEMO_PEOPLE ?= 300

.PHONY: install demo test test-sqlite test-postgres test-slow test-all lint format bench eval clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,scale]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	bash scripts/demo.sh

# The whole suite on SQLite, then every test that opens a gallery database again on
# PostgreSQL (a throwaway server on 127.0.0.1 started by scripts/pg-test-server.sh; Debian:
# apt-get install postgresql), except those whose subject lies outside the database (nopg:
# the index files' crash safety, the Milvus server, the Ray engine and cluster, a server's
# decode memory, a benchmark script's run; their rows go through the same store code the
# other tests run on PostgreSQL). Tests marked postgres (two
# API servers on one gallery, migrate) run in the PostgreSQL pass only.
test: test-sqlite test-postgres

# Two workers (pytest-xdist), each taking whole test files, so module fixtures are built once
# and the tests of a file run in their order.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile

test-sqlite: install
	$(PYTEST)

test-postgres: install
	url=$$(scripts/pg-test-server.sh start) && \
	  FACELEDGER_TEST_POSTGRES=$$url $(PYTEST) -m 'not slow and not nodb and not nopg'

# The slow checks (pytest -m slow): the 500-face ONNX/dlib equivalence, 20 SIGKILLs during an
# ingest, the LFW refit of the synthetic-face model, the shipped calibrations against impostors
# they never saw, all of LFW's 1:N searches through every index, 1M-face recall. They need all
# of LFW embedded twice (with and without the mirror image): built on the first run and kept in
# .cache/lfw-eval ($$FACELEDGER_EVAL_DATA), about 12 minutes on 2 cores.
test-slow: install
	$(PYTEST) -m slow

# What CI runs: the fast suite on both databases, then the slow checks.
test-all: test test-slow

lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy src/faceledger
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format src tests benchmarks scripts
	$(BIN)/ruff check --fix src tests benchmarks scripts

eval: install
	$(BIN)/faceledger eval lfw --lfw-dir $(LFW) --data-dir $(DATA)

clean:
	rm -rf $(VENV) build dist src/*.egg-info
