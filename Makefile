# Two commands do all set-up on a fresh machine: `make fit` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/cifar.yaml
ARGS   ?=
PYTEST_ARGS ?=
# On project machines the real CIFAR-10 images ship as JPEGs in ../shared/data; elsewhere data is downloaded.
SHARED_CIFAR := ../shared/data/cifar10-jpg.tar.gz

.PHONY: fit test demo bench bench-gpu install data clean

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
	WANDB_MODE=offline $(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run_all.py

# The seed's 30-epoch and 18-epoch + TTA CIFAR runs on one GPU, time to 94% → docs/results/gpu_bench.md.
bench-gpu: install data
	PY=$(PY) bash scripts/bench_gpu.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
