# Two commands do all set-up on a fresh machine: `make fit` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/cifar.yaml
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: fit test demo bench install clean

# The stamp is rebuilt when pyproject.toml changes, so `make` re-installs only when dependencies change.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

fit: install
	$(PY) cli.py fit --config $(CONFIG) $(ARGS)

demo: install
	$(PY) cli.py fit --config configs/cifar_cpu.yaml $(ARGS)

test: install
	WANDB_MODE=offline $(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
