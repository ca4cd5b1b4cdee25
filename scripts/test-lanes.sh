#!/usr/bin/env bash
# The whole suite in two lanes at once (`make test`): the tests marked `slurm` in one pytest
# process, every other test in WORKERS pytest-xdist workers (one file per worker at a time).
#
# Why: the Slurm tests wait on the cluster (a job's start in slurmd, its end in sacct, a
# controller that does not answer), and in the workers' queue each wait held a worker. In a
# lane of their own they wait beside the others. Measured (docs/BENCHMARKS.md, "The test
# suite's wall time", session 30): with the Makefile's bytecode cache, 4 % off the suite's wall
# time on 2 cores; the Slurm jobs' own CPU runs on the same cores, so little of a wait was idle.
#
#   scripts/test-lanes.sh [PYTEST ARGS...]   # WORKERS=2 by default; PYTEST=.venv/bin/pytest
#
# The Slurm lane's output is shown when both lanes have ended (its log meanwhile: the path
# printed first). Exit status: 0 when both lanes passed (a lane whose tests were all deselected,
# pytest's 5, counts as passed unless both are), else the main lane's failure, else the Slurm
# lane's.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=${PYTEST:-.venv/bin/pytest}
WORKERS=${WORKERS:-2}
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || {
    echo "test-lanes: WORKERS must be a whole number from 1, got '$WORKERS'" >&2
    exit 2
}

# Three pytest processes on the cores at once keep them all busy (CI: 2 cores), and a math
# library's idle threads that spin then take turns from the others: torch's OpenMP threads
# after each parallel region (the product sets this for its jobs, cluster/jobenv.py, not for
# a test's own process or the commands it runs), OpenBLAS's after each product in numpy.
# Measured on 2 cores (docs/BENCHMARKS.md, "Job threads that wait"): two small-CNN trainings
# at once 33.5-35.5 -> 13.5-14.0 s each; three processes of 200 x 200 matrix products 61 -> 5 s
# each. The results are the same; a setting of the caller's own (even empty) is kept.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY-PASSIVE}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS-1}

log=$(mktemp "${TMPDIR:-/tmp}/pomlia-slurm-lane-XXXXXX")
lane=
# The Slurm lane never outlives the script (a failed main lane, Ctrl-C, CI's SIGTERM): its
# pytest cancels nothing itself, but its tests' fixtures do when it ends by a signal.
end_lane() {
    if [[ -n $lane ]]; then kill -TERM "$lane" 2>/dev/null && wait "$lane" 2>/dev/null; fi
    rm -f "$log"
}
trap end_lane EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "test-lanes: the Slurm lane runs beside the others; its log until it ends: $log"
"$PYTEST" -p no:cacheprovider --lane=slurm --durations=10 "$@" >"$log" 2>&1 &
lane=$!
"$PYTEST" -p no:cacheprovider --lane=rest -n "$WORKERS" --dist loadfile --durations=25 "$@"
rest_rc=$?
wait "$lane"
slurm_rc=$?
lane=
echo
echo "======================== the Slurm lane (pytest --lane=slurm) ========================"
cat "$log"

# pytest exits 5 when it ran no test: the arguments selected none in that lane.
if ((rest_rc == 5 && slurm_rc == 5)); then exit 5; fi
((rest_rc == 5)) && rest_rc=0
((slurm_rc == 5)) && slurm_rc=0
if ((rest_rc != 0)); then exit "$rest_rc"; fi
exit "$slurm_rc"
