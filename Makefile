# Two commands do all set-up on a fresh machine: `make fit` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/cifar.yaml
ARGS   ?=
PYTEST_ARGS ?=
# Two pytest processes, one per core (docs/TESTING.md); each file runs whole in one of them, so the module-scoped
# trained fixtures are built once. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
# On project machines the real CIFAR-10 images ship as JPEGs in ../shared/data; elsewhere data is downloaded.
SHARED_CIFAR := ../shared/data/cifar10-jpg.tar.gz

.PHONY: fit test demo bench gpu-check gpu-carry install data clean

# The stamp is rebuilt when pyproject.toml changes, so `make` re-installs only when dependencies change.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# data/cifar-10-batches-py from the shared JPEGs when they are here; otherwise the run downloads it (MD5-checked).
data: install
	@if [ ! -d data/cifar-10-batches-py ] && [ -f $(SHARED_CIFAR) ]; then \
		echo "converting $(SHARED_CIFAR) to data/cifar-10-batches-py"; \
		$(PY) ../shared/tools/cifar10_from_jpg.py data; \
	fi

fit: install data
	$(PY) cli.py fit --config $(CONFIG) $(ARGS)

# CPU-sized CIFAR-10 run (about 5 minutes on 2 cores; see README).
demo: install data
	$(PY) cli.py fit --config configs/cifar.yaml --config configs/cifar_cpu.yaml $(ARGS)

test: install
	WANDB_MODE=offline $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run_all.py

# The GPU check (docs/GPU_CHECK.md): the seed's CIFAR-10 run + GPU benchmarks in 8 minutes, results under
# runs/gpu_check/out. No venv: made for a bare GPU machine (its own python3, carried wheels and data).
gpu-check:
	bash scripts/gpu_check.sh

# Prepares .gpu_carry/ (wheels, CIFAR-10 JPEGs, WikiText-2 test stream) for gpu-check; needs PyPI and ../shared.
gpu-carry: install
	bash scripts/gpu_carry.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
