#!/usr/bin/env bash
# GPU check of the AutoML stage: a small random-search study whose trials are DeepSpeed training
# jobs with one GPU each (the `local` executor; EXECUTOR=debug runs them in the driver's process,
# as the CPU smoke run of tests/test_gpu_check.py does), against the same first trials on the CPU, in
# one run. Random search with one seed asks for the same configurations in the same order, so
# the first CPU_TRIALS trials of both studies train identical configurations and their times
# compare directly. Not part of the test suite; it prints both studies' tables and the wall
# time of each. Exit status: 0 when both studies ran, 1 when one failed, 3 without a GPU.
#
#   bash scripts/gpu_automl_check.sh                         # ~4 minutes on an H200
#   SCALE=0.05 TRIALS=2 CPU_TRIALS=1 EPOCHS=1 DEVICE=cpu bash scripts/gpu_automl_check.sh
#                                                            # smoke run without a GPU
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-}
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
SCALE=${SCALE:-0.2}            # BloodMNIST look-alike at this fraction of MedMNIST's sizes
TRIALS=${TRIALS:-4}            # trials on the GPU
CPU_TRIALS=${CPU_TRIALS:-2}    # the same first trials on the CPU (the baseline)
EPOCHS=${EPOCHS:-3}            # every trial trains this many epochs (random search: no rungs)
ARCHS=${ARCHS:-small_cnn,resnet18}
DEVICE=${DEVICE:-cuda}         # cpu: a smoke run of the same commands
EXECUTOR=${EXECUTOR:-local}    # the trials: local (a job process each); debug: in the driver

if [[ "$EXECUTOR" != local && "$EXECUTOR" != debug ]]; then
    echo "gpu_automl_check: EXECUTOR must be local or debug, got '$EXECUTOR'" >&2; exit 3
fi
if [[ "$DEVICE" == cuda ]]; then
    command -v nvidia-smi >/dev/null 2>&1 || { echo "gpu_automl_check: no nvidia-smi" >&2; exit 3; }
    GPU_OPTS=(--device cuda --gpus 1)
else
    GPU_OPTS=(--device cpu --bf16)  # the smoke run trains in bf16 too, the GPU default
fi

HOME_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pomlia-gpu-automl-XXXXXX")
trap 'rm -rf "$HOME_DIR"' EXIT
p() { "$PY" -m pomlia_hpc --home "$HOME_DIR/ws" "$@"; }

p init >/dev/null
p data synth --scale "$SCALE" --flags bloodmnist "$HOME_DIR/lk" >/dev/null
p data add bloodmnist --root "$HOME_DIR/lk" | tail -1
p task add blood --dataset bloodmnist --metric acc >/dev/null

status=0
study() {  # NAME TRIALS DEVICE-OPTIONS...
    local name=$1 trials=$2; shift 2
    local t0=$SECONDS
    # --parallel 1: the local executor would hand a second concurrent trial a GPU that
    # does not exist on a one-GPU machine.
    if p automl run blood --study "$name" --optimizer random --seed 0 --trials "$trials" \
        --max-epochs "$EPOCHS" --min-epochs "$EPOCHS" --parallel 1 --archs "$ARCHS" \
        --executor "$EXECUTOR" \
        --no-final "$@"; then
        echo "study $name: $trials trials in $((SECONDS - t0)) s"
    else
        echo "study $name: FAILED after $((SECONDS - t0)) s"; status=1
    fi
}
study "on-$DEVICE" "$TRIALS" "${GPU_OPTS[@]}"
study baseline-cpu "$CPU_TRIALS" --device cpu
exit $status
