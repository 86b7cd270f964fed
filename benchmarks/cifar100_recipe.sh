#!/usr/bin/env bash
# CIFAR-100, resnet32x4 → resnet8x4, the RepDistiller recipe through fsd (see docs/cifar100.md).
#
#   benchmarks/cifar100_recipe.sh DIR [WORKDIR]
#
# DIR is the unpacked cifar-100-python folder (DIR/train, DIR/test); WORKDIR (default ./cifar100-run) receives
#   teacher.pt, store.zarr, student-<recipe>.pt (+ .log.json) and reports/<name>.json.
# Environment overrides (defaults = the paper's recipe):
#   EPOCHS_TEACHER=240 EPOCHS_STUDENT=240 VIEWS=16 DEVICE=auto RECIPES="vanilla kd th-kd crd-th"
#   BATCH_SIZE=64 LR=0.05 SEED=0 TEACHER_ARCH=resnet32x4 STUDENT_ARCH=resnet8x4 FSD=fsd PYTHON=python3
#   QUIET=1 (no progress bars)
# Re-running continues an interrupted run: finished checkpoints are kept (delete WORKDIR, or the file, to
# redo a step), an interrupted extraction resumes its missing chunks, reports are always rewritten.
set -euo pipefail

usage() { echo "usage: $0 CIFAR100_DIR [WORKDIR]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
DATA_DIR=$1
WORKDIR=${2:-cifar100-run}
[[ -f "$DATA_DIR/train" && -f "$DATA_DIR/test" ]] || {
    echo "error: $DATA_DIR/train and $DATA_DIR/test not found (expected the unpacked cifar-100-python folder)" >&2
    exit 2
}

EPOCHS_TEACHER=${EPOCHS_TEACHER:-240}
EPOCHS_STUDENT=${EPOCHS_STUDENT:-240}
VIEWS=${VIEWS:-16}
DEVICE=${DEVICE:-auto}
RECIPES=${RECIPES:-"vanilla kd th-kd crd-th"}
BATCH_SIZE=${BATCH_SIZE:-64}
LR=${LR:-0.05}
SEED=${SEED:-0}
TEACHER_ARCH=${TEACHER_ARCH:-resnet32x4}
STUDENT_ARCH=${STUDENT_ARCH:-resnet8x4}
FSD=${FSD:-fsd}
PYTHON=${PYTHON:-python3}
QUIET_FLAG=()
if [[ -n "${QUIET:-}" && "${QUIET}" != 0 ]]; then QUIET_FLAG=(--quiet); fi

DATASET="cifar100:$DATA_DIR"
TEACHER="$WORKDIR/teacher.pt"
STORE="$WORKDIR/store.zarr"
REPORTS="$WORKDIR/reports"
mkdir -p "$WORKDIR" "$REPORTS"

step() { printf '\n== %s\n' "$*"; }

step "teacher: $TEACHER_ARCH, $EPOCHS_TEACHER epochs, lr $LR, batch $BATCH_SIZE"
if [[ -f "$TEACHER" ]]; then
    echo "$TEACHER exists: kept"
else
    "$FSD" train-teacher --dataset "$DATASET" --arch "$TEACHER_ARCH" --out "$TEACHER" --epochs "$EPOCHS_TEACHER" \
        --lr "$LR" --batch-size "$BATCH_SIZE" --seed "$SEED" --device "$DEVICE" ${QUIET_FLAG[@]+"${QUIET_FLAG[@]}"}
fi

step "extract: $VIEWS views per image (view 0 = the plain image), float16"
# Same command on an existing store: resumes missing chunks; nothing to do when it is complete.
"$FSD" extract-teacher --teacher "$TEACHER" --dataset "$DATASET" --out "$STORE" --views "$VIEWS" --dtype float16 \
    --seed "$SEED" --device "$DEVICE" ${QUIET_FLAG[@]+"${QUIET_FLAG[@]}"}

step "evaluate the teacher"
"$FSD" eval --faiss --model "$TEACHER" --dataset "$DATASET" --split test --out "$REPORTS/teacher.json" \
    --overwrite --device "$DEVICE"

names=(teacher)
for recipe in $RECIPES; do
    student="$WORKDIR/student-$recipe.pt"
    step "student: $STUDENT_ARCH, recipe $recipe, $EPOCHS_STUDENT epochs"
    if [[ -f "$student" ]]; then
        echo "$student exists: kept"
    else
        "$FSD" train-student --store "$STORE" --dataset "$DATASET" --arch "$STUDENT_ARCH" --out "$student" \
            --recipe "$recipe" --epochs "$EPOCHS_STUDENT" --lr "$LR" --batch-size "$BATCH_SIZE" --seed "$SEED" \
            --device "$DEVICE" ${QUIET_FLAG[@]+"${QUIET_FLAG[@]}"}
    fi
    "$FSD" eval --faiss --model "$student" --dataset "$DATASET" --split test --out "$REPORTS/student-$recipe.json" \
        --overwrite --device "$DEVICE"
    names+=("student-$recipe")
done

reports=()
for name in "${names[@]}"; do reports+=("$REPORTS/$name.json"); done
baseline=()  # differences against the vanilla student when it ran, else against the first report (the teacher)
if [[ " ${names[*]} " == *" student-vanilla "* ]]; then baseline=(--baseline "$REPORTS/student-vanilla.json"); fi

step "summary (test split)"
# `fsd compare REPORT...` when this fsd has it; otherwise (or if it fails) a table from the report files.
commands=$("$FSD" --help 2>/dev/null || true)
if grep -qE '^[[:space:]]+compare([[:space:]]|$)' <<<"$commands" \
        && "$FSD" compare "${reports[@]}" ${baseline[@]+"${baseline[@]}"}; then
    :
else
    "$PYTHON" - "${reports[@]}" <<'EOF'
import json, pathlib, sys

rows = {pathlib.Path(p).stem: json.loads(pathlib.Path(p).read_text()) for p in sys.argv[1:]}
try:
    from distill.evaluation import comparison_table
    print(comparison_table(rows))
except ImportError:  # a python without fsd: top-1 only
    for name, report in rows.items():
        top1 = report.get("classification", {}).get("top1")
        print(f"{name:<20} top-1 {'—' if top1 is None else f'{100 * top1:.2f}'}")
EOF
fi
echo
echo "published (RepDistiller / PAPER.md, 240 epochs, step schedule): teacher 79.42, vanilla 72.50, KD 73.33, CRD 75.51"
