# wschat: `make run` serves the chat, `make test` runs every test. Both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint conformance bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/wschat serve --host $(HOST) --port $(PORT) --hub memory://

# The suite mostly waits on sockets, timers and browsers: a few processes
# (pytest-xdist, one test module each) run it in well under half the time.
TEST_WORKERS ?= 3

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check wschat tests benchmarks
	$(BIN)/mypy wschat

clean:
	rm -rf $(VENV) build *.egg-info

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# selfcheck first: the load generator must count a misdelivering server's faults exactly;
# history_size (~10 s): a history reply's bytes on the wire with and without --compression
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/selfcheck.py
	$(BIN)/python benchmarks/history_size.py
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

conformance: $(STAMP)
	bash .ci/conformance.sh $(CONFORMANCE_PROFILE)
