# The README's two quick-start commands: `make demo` and `make test`.
# Setup installs PyTorch's CPU build first where no torch is present (see README, "Setup").
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: setup demo test benchmark

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/gancore train --dataset ring8 --steps 2000

test: setup
	$(BIN)/python -m pytest

benchmark: setup
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-group-by=group
