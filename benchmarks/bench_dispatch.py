"""Per-call dispatch overhead of the "device" backend against joblib's loky and threading
backends, on the same tiny calls, measured side by side in one run.

Rounds alternate between the contenders so that drifting machine load hits all of them;
the medians per call and their ratios are printed.

    python benchmarks/bench_dispatch.py [--calls 20000] [--rounds 5] [--simulate-gpus 2]
"""

import argparse
import statistics
import sys
import time

from joblib import Parallel, delayed

import devicejoblib
from devicejoblib import kernel


def tiny(x):
    return x


@kernel
def tiny_kernel(x):
    return x


@tiny_kernel.cuda
def _(x):
    return x


def contenders(n_jobs, with_gpus=True):
    """name -> function running a list of calls; each builds its backend as users do."""
    def run(function, backend, **kwargs):
        def go(n):
            return Parallel(n_jobs=n_jobs, backend=backend, **kwargs)(
                delayed(function)(i) for i in range(n))
        return go

    cpu = {
        "cpu route: loky, batch auto": run(tiny, "loky"),
        "cpu route: device, batch auto": run(tiny, "device"),
    }
    gpu = {
        "gpu route: threading, batch auto": run(tiny, "threading"),
        "gpu route: device, batch 1": run(tiny_kernel, "device", batch_size=1),
        "gpu route: device, batch auto": run(tiny_kernel, "device"),
    }
    return {**cpu, **gpu} if with_gpus else cpu


def measure(contenders, calls, rounds):
    times = {name: [] for name in contenders}
    for go in contenders.values():
        go(min(calls, 2000))  # warm up: start loky workers, GPU threads
    for _ in range(rounds):
        for name, go in contenders.items():
            start = time.perf_counter()
            out = go(calls)
            times[name].append((time.perf_counter() - start) / calls)
            assert out == list(range(calls)), name
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--simulate-gpus", type=int, default=None,
                        help="simulated GPUs (default: 2 when this machine has none)")
    args = parser.parse_args()
    with devicejoblib.simulate_gpus.unless_real(args.simulate_gpus):
        gpus = [str(d) for d in devicejoblib.devices() if d.is_gpu]
        result = measure(contenders(args.n_jobs, bool(gpus)), args.calls, args.rounds)
    print(f"{args.calls} calls x {args.rounds} rounds, n_jobs={args.n_jobs}, "
          f"GPUs: {', '.join(gpus) or 'none'}; Python {sys.version.split()[0]}")
    print(f"{'contender':<36}{'us/call':>9}{'ratio':>8}")
    baselines = {"cpu": "cpu route: loky, batch auto", "gpu": "gpu route: threading, batch auto"}
    for name, seconds in result.items():
        base = result[baselines[name[:3]]]
        print(f"{name:<36}{seconds * 1e6:9.2f}{seconds / base:8.2f}")


if __name__ == "__main__":
    main()
