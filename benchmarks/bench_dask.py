"""The device backend on a local Dask cluster, side by side in one run:

1. per-call cost of tiny calls (a plain function) through the device backend against
   joblib's own "dask" backend, on the same cluster of CPU workers, repeats interleaved;
2. a GPU-bound workload (logistic-map iterations, fused on the GPU workers) on a cluster
   of two simulated-GPU workers against one.

    python benchmarks/bench_dask.py [--calls 20000] [--maps 10000 --steps 20000]
                                    [--repeat 5]

Clusters are ``devicejoblib.simulated_cluster`` (worker processes on 127.0.0.1, one
thread each); on a machine with GPUs, the GPU workers still see simulated ones.
"""

import argparse
import logging
import statistics
import time

import numpy as np
from distributed import Client
from joblib import Parallel, delayed, parallel_config

import devicejoblib
from devicejoblib import DeviceBackend
from devicejoblib.kernels import logistic_map


def tiny(i):
    return i + 1


def timed(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def tiny_calls(args):
    expected = [i + 1 for i in range(args.calls)]

    def device():
        assert Parallel(backend=backend)(delayed(tiny)(i) for i in range(args.calls)) \
            == expected

    def dask():
        with parallel_config(backend="dask"):
            assert Parallel()(delayed(tiny)(i) for i in range(args.calls)) == expected

    with devicejoblib.simulated_cluster(cpu_workers=2, gpu_workers=0,
                                        silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(2)
        backend = DeviceBackend(client=client)
        device(), dask()  # warm up: imports on the workers, batch sizes
        times = {"device": [], "dask": []}
        for _ in range(args.repeat):
            times["device"].append(timed(device))
            times["dask"].append(timed(dask))
    print(f"{args.calls} tiny calls on 2 CPU workers, median of {args.repeat}:")
    for name, values in times.items():
        print(f"  {name:>7} backend: {statistics.median(values):.3f} s "
              f"({statistics.median(values) / args.calls * 1e6:.1f} us per call)")
    ratios = [d / k for d, k in zip(times["device"], times["dask"])]
    print(f"  device / dask: median {statistics.median(ratios):.2f} "
          f"(each repeat: {', '.join(f'{r:.2f}' for r in ratios)})")


def gpu_bound(args):
    rng = np.random.default_rng(0)
    x0, r = rng.uniform(0.1, 0.9, args.maps), rng.uniform(3.5, 3.9, args.maps)
    expected = logistic_map.batched_form("cpu").function(x0, r, args.steps)
    results = {}
    for n_gpus in (1, 2):
        with devicejoblib.simulated_cluster(cpu_workers=0, gpu_workers=n_gpus,
                                            silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            client.wait_for_workers(n_gpus)
            backend = DeviceBackend(client=client, placement="gpu")

            def run(backend=backend):
                out = Parallel(backend=backend)(
                    delayed(logistic_map)(float(a), float(b), args.steps)
                    for a, b in zip(x0, r))
                np.testing.assert_allclose(out, expected)

            run()  # warm up: imports, the workers' launch sizes, the part size
            results[n_gpus] = [timed(run) for _ in range(args.repeat)]
            report = backend.report()
        parts = sum(row["batches"] for row in report.values())
        calls = sum(row["calls"] for row in report.values())
        print(f"{args.maps} logistic maps x {args.steps} steps on {n_gpus} simulated-GPU "
              f"worker(s): median {statistics.median(results[n_gpus]):.3f} s, "
              f"{calls / parts:.0f} calls per Dask task")
    speedup = statistics.median(results[1]) / statistics.median(results[2])
    print(f"  two GPU workers against one: {speedup:.2f}x faster")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--maps", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tiny_calls(args)
    gpu_bound(args)


if __name__ == "__main__":
    main()
