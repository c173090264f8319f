#!/usr/bin/env bash
# One call on a lent GPU machine: the GPU tests, the main job with cpu, gpu and auto
# placements (a cold model, then a warm one), auto's GPU cost timer against the wall
# clock, the benchmarks, then the rest of the test suite. Every step has a time limit, so that one hang cannot spend the lease; full logs go
# to the folder given (default ./gpu-logs) and, under $OUT, into one tarball after each
# step (the device tool brings back at most 8 files, and what a killed call left). A
# short summary is printed last. Runs from the checkout: PYTHONPATH=src, no install.
#   [SKIP="bench_import pytest-rest ..."] bash benchmarks/gpu_session.sh [LOG_DIR]
set -u
cd "$(dirname "$0")/.."
logs=${1:-gpu-logs}
mkdir -p "$logs"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export DEVICEJOBLIB_MODEL_PATH="$logs/placement-model.json"
start=$SECONDS
: > "$logs/steps.txt"

step() {  # $1: seconds allowed, $2: log name, then the command; skipped if named in $SKIP
    local limit=$1 name=$2
    shift 2
    case " ${SKIP:-} " in *" $name "*) return 0 ;; esac
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" > "$logs/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - t0)) s" >> "$logs/steps.txt"
    [ -n "${OUT:-}" ] && tar -czf "$OUT/gpu-logs.tar.gz" "$logs"  # kept if a later step hangs
    return $rc
}

step 30 info bash -c 'nvidia-smi; python -c "import sys; print(sys.version)"; python -m devicejoblib info'
step 180 pytest-gpu python -m pytest -m gpu -p no:cacheprovider -q --maxfail 20 --timeout 60
gpu_tests=$?
# this GPU's timing profile, for simulated GPUs (brought back in the logs' tarball)
step 120 calibrate python -m devicejoblib calibrate --output "$logs/profile.json"
for run in cold warm; do  # the main job, then small calls (the CPU's) to large (the GPU's)
    step 120 "bench-$run" python -m devicejoblib bench --repeat 3 --explain \
        --json "$logs/bench-$run.json"
    step 120 "bench-saxpy-$run" python -m devicejoblib bench --workload saxpy --repeat 3 \
        --explain --json "$logs/bench-saxpy-$run.json"
done
step 180 bench_cost_timer python benchmarks/bench_cost_timer.py
step 60 bench_warm_start python benchmarks/bench_warm_start.py --calls 20000 --latency 2e-3
for bench in bench_fusion bench_dispatch bench_import; do
    step 90 "$bench" python "benchmarks/$bench.py"
done
step "${REST_LIMIT:-200}" pytest-rest python -m pytest -m "not gpu and not slow" \
    -p no:cacheprovider -q --timeout 60

{
    cat "$logs/steps.txt"
    echo "== devices"; sed -n '/^device /,/^$/p' "$logs/info.txt"
    echo "== calibrate"; tail -n 12 "$logs/calibrate.txt"
    for name in pytest-gpu pytest-rest; do echo "== $name"; tail -n 25 "$logs/$name.txt"; done
    for run in cold warm; do
        for bench in bench bench-saxpy; do
            echo "== $bench, $run model"; grep -B30 -m1 "^mixed.*auto" "$logs/$bench-$run.txt"
        done
    done
    for bench in bench_cost_timer bench_warm_start bench_fusion bench_dispatch bench_import; do
        echo "== $bench"; tail -n 30 "$logs/$bench.txt"
    done
    echo "== total $((SECONDS - start)) s"
} | tee "$logs/summary.txt"
if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/gpu-logs.tar.gz" "$logs"
fi
exit "$gpu_tests"
