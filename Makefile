# faceledger: `make demo` runs the main job, `make test` runs the tests.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LFW    ?= $(abspath ../shared/data/lfw)
DATA   ?= faceledger-data
DEMO_PEOPLE ?= 300

.PHONY: install demo test lint format bench eval clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,scale]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy src/faceledger

format: install
	$(BIN)/ruff format src tests benchmarks scripts
	$(BIN)/ruff check --fix src tests benchmarks scripts

eval: install
	$(BIN)/faceledger eval lfw --lfw-dir $(LFW) --data-dir $(DATA)

clean:
	rm -rf $(VENV) build dist src/*.egg-info
