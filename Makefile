# Racklet BMC. Every target sets itself up: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MPY := $(BIN)/micropython
FW_FILES := $(shell find firmware -name '*.py')
PORT ?= /dev/ttyACM0
BOARD ?= pico-rpi4
RACK ?= .demo/rack
BOARDS ?= 4

.PHONY: venv test lint typecheck firmware-check unit demo sim bench deploy deploy-plan clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.txt requirements-stubs.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	rm -rf typings && $(BIN)/pip install -q --no-deps --target typings -r requirements-stubs.txt
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy
	$(BIN)/python tools/check_firmware_types.py

firmware-check: venv
	$(BIN)/python tools/compile_firmware.py

unit: venv
	$(BIN)/pytest -q

test: lint typecheck firmware-check unit

demo: venv
	$(BIN)/python -m racklet_host.demo --rack $(RACK) --boards $(BOARDS)

sim: venv
	$(BIN)/bmc-sim --rack $(RACK) --boards $(BOARDS)

bench: venv
	$(BIN)/python -m bench

deploy: venv
	$(BIN)/python -m racklet_host.deploy --port $(PORT) --board $(BOARD)

deploy-plan: venv
	$(BIN)/python -m racklet_host.deploy --board $(BOARD) --dry-run

clean:
	rm -rf $(VENV) typings .demo build *.egg-info
