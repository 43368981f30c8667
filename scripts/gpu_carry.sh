#!/usr/bin/env bash
# Prepare the carry for scripts/gpu_check.sh (`make gpu-carry`): run it here, where PyPI and ../shared are.
#
# $CARRY/ (default .gpu_carry, ignored by git; about 50 MB, within the lent machine's 64 MiB per call):
#   wheels/               $PACKAGES (below) with everything they need, for the GPU machine's Python
#                         ($PYTHON_VERSION, x86-64 manylinux); gpu_check.sh installs only what is missing
#   wheels/requirements.txt, requirements-nodeps.txt  those, pinned to the versions this checkout's venv tests
#                         with (the second installed without its requirements: torch is the node's own)
#   cifar10-jpg.tar.gz, cifar10_from_jpg.py   the real CIFAR-10 images and their converter (../shared)
#   wiki.test.tokens      the WikiText-2 test stream, for the cache benchmark
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${CARRY:-.gpu_carry}
SHARED=${SHARED:-../shared}
VENV_PY=${VENV_PY:-.venv/bin/python}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}

# What `import cli` needs beyond a GPU node's own PyTorch, Lightning, torchmetrics and torchvision (a test checks
# the GPU check's dry run with everything else of pyproject.toml's dependencies hidden: tests/scripts/test_gpu_check.py).
# schedulefree declares torch as a requirement: it is carried alone (--no-deps), or pip would fetch torch and CUDA.
PACKAGES="jsonargparse[signatures] wandb muon-optimizer"
NO_DEPS_PACKAGES="schedulefree"
version() { "$VENV_PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins() { for package in "$@"; do echo "$package==$(version "${package%%[*}")"; done; }
mkdir -p "$CARRY/wheels"
pins $PACKAGES > "$CARRY/wheels/requirements.txt"
pins $NO_DEPS_PACKAGES > "$CARRY/wheels/requirements-nodeps.txt"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
download() {
    "$VENV_PY" -m pip download --quiet --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
        "${platforms[@]}" -d "$CARRY/wheels" "$@"
}
download -r "$CARRY/wheels/requirements.txt"
download --no-deps -r "$CARRY/wheels/requirements-nodeps.txt"
cp "$SHARED/data/cifar10-jpg.tar.gz" "$SHARED/tools/cifar10_from_jpg.py" "$SHARED/data/wikitext-2/wiki.test.tokens" \
    "$CARRY/"
du -sh "$CARRY"
echo "carry ready: name $CARRY in the device call's carry and run 'bash scripts/gpu_check.sh' (docs/GPU_CHECK.md)"
