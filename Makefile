# One entry point. `make demo` and `make test` each install what they need into .venv first.
# torch: TORCH pins the CPU build on this project's machines (torch==2.13.0 is a CPU wheel on their
# disk); elsewhere on a CPU-only machine add TORCH_INDEX=https://download.pytorch.org/whl/cpu, on a
# GPU machine TORCH=torch.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
GLUE ?= $(firstword $(YTUNE_GLUE_DIR) $(wildcard ../shared/data/glue))
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PIP) -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/ytune demo $(if $(GLUE),--data-dir $(GLUE))

test: install lint
	$(if $(GLUE),YTUNE_GLUE_DIR=$(abspath $(GLUE))) $(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/bench_read.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
