#!/usr/bin/env bash
# The GPU check in one command, on a bare GPU machine with no network (`make gpu-check`; docs/GPU_CHECK.md):
#
#   bash scripts/gpu_check.sh              # the seed's CIFAR-10 run + GPU benchmarks, at most 8 minutes
#   bash scripts/gpu_check.sh --dry-run    # the same script on the CPU at toy sizes (a test in `make test`)
#
# 1. set-up from carried files only: missing packages from $CARRY/wheels (pip, no index), the CIFAR-10 JPEGs
#    from $CARRY/cifar10-jpg.tar.gz converted to $DATA/cifar-10-batches-py (the converter is carried too);
# 2. scripts/gpu_check.py: versions, the runs and the benchmarks, each result written under $OUT at once.
# No virtualenv: it runs with the machine's own python3 (torch, Lightning, torchvision already there).
#
# Environment: PY (python, default python3), CARRY (default .gpu_carry, made by scripts/gpu_carry.sh),
# OUT (results, default runs/gpu_check/out), DATA (default data, or a temporary folder with --dry-run),
# BUDGET_S (whole command, default 480).
set -euo pipefail
started=$(date +%s)
cd "$(dirname "$0")/.."
PY=${PY:-python3}
CARRY=${CARRY:-.gpu_carry}
OUT=${OUT:-runs/gpu_check/out}
BUDGET_S=${BUDGET_S:-480}
DRY=()
if [[ "${1:-}" == --dry-run ]]; then DRY=(--dry-run); fi
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1  # everything printed is also kept with the results
echo "[gpu_check.sh] $(date -u +%FT%TZ) on $(hostname), carry: $CARRY, out: $OUT"

needed=(jsonargparse docstring_parser typeshed_client wandb muon schedulefree)  # what gpu_carry.sh carries
if ! "$PY" -c "import $(IFS=,; echo "${needed[*]}")" 2>/dev/null; then
    if [[ -d "$CARRY/wheels" ]]; then
        echo "[gpu_check.sh] installing what is missing from $CARRY/wheels (no index)"
        # Into the interpreter's own environment, so pip keeps the packages already there and adds only the
        # missing ones; where that is read-only, into a folder of our own put before them on the path.
        install() {  # the requirements with theirs, then the ones carried alone (their torch is the node's)
            "$PY" -m pip install -q --no-index --find-links "$CARRY/wheels" "$@" -r "$CARRY/wheels/requirements.txt" &&
            "$PY" -m pip install -q --no-index --find-links "$CARRY/wheels" --no-deps "$@" \
                -r "$CARRY/wheels/requirements-nodeps.txt"
        }
        if ! install; then
            install --target /tmp/gpu_check_site
            export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
        fi
    fi
    "$PY" -c "import jsonargparse, typeshed_client, muon, schedulefree" || {
        echo "[gpu_check.sh] jsonargparse[signatures], muon-optimizer or schedulefree is missing and $CARRY/wheels" \
             "cannot provide it: run scripts/gpu_carry.sh on a machine with PyPI access first." >&2; exit 2; }
    "$PY" -c "import wandb" || echo "[gpu_check.sh] wandb unavailable: the runs log to CSV only" \
                                    "(configs/trainer/csv_only.yaml)"
fi

if [[ ${#DRY[@]} -gt 0 ]]; then
    DATA=${DATA:-$(mktemp -d)}
    SUBSET=(--train-per-class 20 --test-per-class 5)
else
    DATA=${DATA:-data}
    SUBSET=()
fi
if [[ ! -d "$DATA/cifar-10-batches-py" ]]; then
    if [[ ! -f "$CARRY/cifar10-jpg.tar.gz" ]]; then
        echo "[gpu_check.sh] no $DATA/cifar-10-batches-py and no $CARRY/cifar10-jpg.tar.gz to make it from:" \
             "run scripts/gpu_carry.sh first, or set DATA to a folder holding cifar-10-batches-py." >&2
        exit 2
    fi
    echo "[gpu_check.sh] converting $CARRY/cifar10-jpg.tar.gz into $DATA/cifar-10-batches-py"
    "$PY" "$CARRY/cifar10_from_jpg.py" "$DATA" --archive "$CARRY/cifar10-jpg.tar.gz" "${SUBSET[@]}"
fi
WIKI=()
if [[ -f "$CARRY/wiki.test.tokens" ]]; then WIKI=(--wiki-tokens "$CARRY/wiki.test.tokens"); fi

"$PY" -u scripts/gpu_check.py "${DRY[@]}" "${WIKI[@]}" --out "$OUT" --data-dir "$DATA" \
    --budget-s "$BUDGET_S" --started "$started"
