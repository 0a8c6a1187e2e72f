# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv when it is
# missing (or when pyproject.toml changed) and install the project with its embedded endpoint.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint servers bench clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "kingest needs Python 3.11 or newer" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/kingest local --install-only
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kingest demo

test: $(STAMP) lint servers
	$(BIN)/pytest

# The CDC tests need PostgreSQL with wal_level=logical and MariaDB with a row-based binlog;
# .ci/servers sets both (restarting a server only when a setting was missing). Where it cannot
# (not root, no such servers), their tests skip with the reason, except under CI=true.
servers:
	@.ci/servers || { test "$$CI" != true && \
		echo "make: database servers not prepared; their tests will skip" >&2; }

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/kingest bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
