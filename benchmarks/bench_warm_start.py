"""A fresh process with a cold placement model against one with a warm model: many small
Python-level recurrences (logistic maps) with a batched form, on (simulated) GPUs,
against joblib's threading backend one call at a time, side by side in each process.

    python benchmarks/bench_warm_start.py [--calls 5000] [--steps 200] [--latency 2e-4]

Runs itself three times in fresh processes sharing one temporary model file: the first
starts cold (GPU launch sizes grow from 8), the next two start from what the first
learnt (the settled launch size, persisted). Prints, for each, the seconds of both and
their ratio. The simulated launch latency stands for a real GPU's launch cost.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def one_process(args):
    from joblib import Parallel, delayed

    from devicejoblib import DeviceBackend, simulate_gpus
    from devicejoblib.kernels import logistic_map

    rng = np.random.default_rng(0)
    x0, r = rng.uniform(0.1, 0.9, args.calls), rng.uniform(3.5, 3.9, args.calls)
    calls = [delayed(logistic_map)(float(a), float(b), args.steps) for a, b in zip(x0, r)]
    start = time.perf_counter()
    expected = Parallel(n_jobs=2, backend="threading", batch_size=1)(calls)
    threading = time.perf_counter() - start
    with simulate_gpus.unless_real(None) as simulation:
        if simulation.n:
            simulation = simulate_gpus(simulation.n, launch_latency=args.latency)
        with simulation:
            backend = DeviceBackend(placement="gpu")
            start = time.perf_counter()
            out = Parallel(n_jobs=2, backend=backend)(calls)
            device = time.perf_counter() - start
            sizes = {d: r.get("batch_size") for d, r in backend.report().items()}
    np.testing.assert_allclose(out, expected)
    print(json.dumps({"threading": threading, "device": device, "launch_sizes": sizes}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--latency", type=float, default=2e-4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return one_process(args)
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "DEVICEJOBLIB_MODEL_PATH": os.path.join(folder, "model.json")}
        for name in ("cold", "warm", "warm"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--calls", str(args.calls),
                 "--steps", str(args.steps), "--latency", str(args.latency)],
                env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{name} model: threading one by one {result['threading']:.3f} s, "
                  f"device backend fused {result['device']:.3f} s: "
                  f"{result['threading'] / result['device']:.1f}x faster "
                  f"(launch sizes {result['launch_sizes']})")


if __name__ == "__main__":
    main()
