"""Many small calls, four ways, side by side in one run, as ratios to the limit:

1. joblib's threading backend, one call at a time (its default batching);
2. the device backend on GPUs, the kernel without its batched form (no fusion);
3. the device backend on GPUs, with fusion;
4. the same with ``pre_dispatch="all"`` (joblib hands every call over at once, so a GPU
   worker can fuse up to its launch size to the end);
5. one hand-written vectorised call over all inputs (the limit).

Two workloads: memory-bound SAXPYs, and logistic-map iterations (Python-level work per
call whose batched form vectorises across calls). On simulated GPUs when the machine has
none (NumPy does the work), on real ones otherwise. Also prints the launch sizes each
GPU settled on.

    python benchmarks/bench_fusion.py [--saxpy 20000 --size 1000] [--maps 5000 --steps 2000]
"""

import argparse
import statistics
import sys
import time

import numpy as np
from joblib import Parallel, delayed

import devicejoblib
from devicejoblib import DeviceBackend, Kernel, array_module
from devicejoblib.kernels import logistic_map, saxpy


def without_fusion(k):
    """The same kernel with its CPU and GPU implementations, and no batched form."""
    return Kernel(k._cpu, k._cuda, wraps=k.__wrapped__)


def workloads(args):
    rng = np.random.default_rng(0)
    a = rng.random(args.saxpy)
    xs = [rng.random(args.size) for _ in range(args.saxpy)]
    ys = [rng.random(args.size) for _ in range(args.saxpy)]
    x0 = rng.uniform(0.1, 0.9, args.maps)
    r = rng.uniform(3.5, 3.9, args.maps)

    def saxpy_limit():
        xp = array_module()
        out = xp.asarray(a)[:, None] * xp.asarray(np.stack(xs)) + xp.asarray(np.stack(ys))
        return list(out.get() if hasattr(out, "get") else out)

    def maps_limit():
        return list(logistic_map.batched_form("cpu").function(x0, r, args.steps))

    return {
        f"saxpy x{args.saxpy} ({args.size} float64)": (
            saxpy, [(a[i], xs[i], ys[i]) for i in range(args.saxpy)], saxpy_limit),
        f"logistic map x{args.maps} ({args.steps} steps)": (
            logistic_map, [(x0[i], r[i], args.steps) for i in range(args.maps)], maps_limit),
    }


def contenders(k, calls, limit):
    plain = without_fusion(k)

    def threading():
        return Parallel(n_jobs=2, backend="threading")(delayed(plain)(*c) for c in calls)

    def device(kern, pre_dispatch="2 * n_jobs"):
        def run():
            backend = DeviceBackend(placement="gpu")
            out = Parallel(n_jobs=2, backend=backend, pre_dispatch=pre_dispatch)(
                delayed(kern)(*c) for c in calls)
            run.report = backend.report()
            return out
        return run

    return {"threading, one by one": threading, "device, no fusion": device(plain),
            "device, fused": device(k), "fused, pre_dispatch=all": device(k, "all"),
            "vectorised (limit)": limit}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saxpy", type=int, default=20000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--maps", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--simulate-gpus", type=int, default=None)
    args = parser.parse_args()
    with devicejoblib.simulate_gpus.unless_real(args.simulate_gpus):
        gpus = [str(d) for d in devicejoblib.devices() if d.is_gpu]
        print(f"GPUs: {', '.join(gpus)}; Python {sys.version.split()[0]}, "
              f"NumPy {np.__version__}; median of {args.rounds} rounds")
        for name, (k, calls, limit) in workloads(args).items():
            runs = contenders(k, calls, limit)
            expected = [k(*c) for c in calls[:50]]
            times = {label: [] for label in runs}
            for _ in range(args.rounds):
                for label, run in runs.items():
                    start = time.perf_counter()
                    out = run()
                    times[label].append(time.perf_counter() - start)
                    for got, want in zip(out[:50], expected):
                        np.testing.assert_allclose(got, want, rtol=1e-12)
            medians = {label: statistics.median(t) for label, t in times.items()}
            base, best = medians["threading, one by one"], medians["vectorised (limit)"]
            print(f"\n{name}")
            print(f"{'contender':<24}{'seconds':>9}{'x limit':>9}{'speed-up vs threading':>23}")
            for label, seconds in medians.items():
                print(f"{label:<24}{seconds:9.3f}{seconds / best:9.2f}{base / seconds:23.2f}")
            for device, r in runs["device, fused"].report.items():
                curve = ", ".join(f"{size}: {s * 1e6:.0f}"
                                  for size, s in r["per_call_seconds"].items())
                print(f"{device}: launch size {r['batch_size']} ({r['batch_policy']}); "
                      f"us per call by launch size: {curve}")


if __name__ == "__main__":
    main()
