# The two commands of the README:
#   make demo   set everything up, start the stack and run the live demo stream
#   make test   set everything up, start the stack (or reuse a healthy one), run all tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CLI    := $(BIN)/streamledger

# Fabric v3.1.5's release commit is not served by every Go module proxy: where the
# shared local mirror sits beside the repo, Go reads it first (a file:// GOPROXY entry);
# elsewhere Go's own GOPROXY is used unchanged.
GOPROXY_MIRROR := $(abspath ../shared/goproxy)
ifneq ($(wildcard $(GOPROXY_MIRROR)/github.com),)
export GOPROXY := file://$(GOPROXY_MIRROR),$(shell go env GOPROXY)
endif

.PHONY: install system-deps stack demo test unit bench-deps down clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed system-deps

system-deps:
	@bash deploy/system-deps.sh

# bench/pipeline.py's peer, a Quix Streams app, is not a dependency of the project: Quix
# Streams 3.28 caps pydantic-settings below the version the project pins, so it goes in
# without its own pins (its other dependencies by name).
bench-deps: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps quixstreams==3.28.1
	$(BIN)/pip install -q 'confluent-kafka>=2.8.2,<2.13' 'rocksdict>=0.3,<0.4' 'orjson>=3.9,<4' 'jsonlines>=4,<5' \
		'jsonpath-ng>=1.7,<2' 'jsonschema>=4.3'

stack: install
	$(CLI) stack up

demo: stack
	$(CLI) demo

unit: $(VENV)/.installed
	$(BIN)/python -m pytest -q tests/unit

# One pytest run over every suite; exit code 5 (no test collected) means the suites
# vanished, which must fail loudly rather than pass or be mistaken for a test failure.
test: stack
	bash chaincode/test.sh
	@$(BIN)/python -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests - the test suites are missing"; exit 1; fi; \
	exit $$rc

down:
	-$(CLI) stack down

clean: down
	rm -rf $(VENV)
