#!/usr/bin/env bash
# One call on a lent GPU machine: the whole test suite including GPU tests, then the
# benchmarks on the real GPU(s); full logs go to the folder given (default $OUT or ./gpu-logs),
# a short summary is printed last. Runs from the checkout: PYTHONPATH=src, no install.
#   bash benchmarks/gpu_session.sh [LOG_DIR]
set -u
cd "$(dirname "$0")/.."
logs=${1:-${OUT:-gpu-logs}}
mkdir -p "$logs"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}

{ nvidia-smi; python -m devicejoblib info; } > "$logs/info.txt" 2>&1
python -m pytest -m "gpu or not slow" -p no:cacheprovider > "$logs/pytest.txt" 2>&1
tests=$?
benches="bench_import bench_dispatch bench_fusion bench_warm_start"
for bench in $benches; do
    python "benchmarks/$bench.py" > "$logs/$bench.txt" 2>&1
done
# the main job with cpu, gpu and auto placements: a cold model, then a warm one
export DEVICEJOBLIB_MODEL_PATH="$logs/placement-model.json"
for run in cold warm; do
    python -m devicejoblib bench --repeat 3 --json "$logs/bench-$run.json" \
        > "$logs/bench-$run.txt" 2>&1
done

echo "== devices"; sed -n '/^device /,/^$/p' "$logs/info.txt"
echo "== pytest (exit $tests)"; tail -n 3 "$logs/pytest.txt"
for bench in $benches; do echo "== $bench"; cat "$logs/$bench.txt"; done
for run in cold warm; do echo "== devicejoblib bench, $run model"; tail -n 20 "$logs/bench-$run.txt"; done
exit "$tests"
