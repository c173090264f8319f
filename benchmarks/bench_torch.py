"""PyTorch batch inference: the reference classifier (devicejoblib.kernels.classifier)
over many image batches, through the device backend against the ways a user would run
it without it, side by side in one run (rounds taking turns; medians).

On CPU workers: a single-process torch loop (torch's own threads), joblib's loky backend
calling the same kernel, and the device backend (placement="cpu"). On a real GPU, also:
a hand-written loop on that GPU, the backend's GPU placement, and small requests fused
against unfused.

    python benchmarks/bench_torch.py [--batches 200] [--images 32] [--rounds 5]
"""

import argparse
import statistics
import time

import torch
from joblib import Parallel, delayed

import devicejoblib
from devicejoblib import DeviceBackend
from devicejoblib.kernels import classifier


def contenders(batches, n_jobs):
    model = classifier.build(0)

    def loop():
        return [classifier._forward(model, b) for b in batches]

    def run(backend, function=classifier.classify, **kwargs):
        return lambda: Parallel(n_jobs=n_jobs, backend=backend, **kwargs)(
            delayed(function)(b) for b in batches)

    found = {"cpu: one process, torch's threads": loop,
             "cpu: joblib loky": run("loky"),
             "cpu: device backend": run(DeviceBackend(placement="cpu"))}
    gpus = [d for d in devicejoblib.devices() if d.is_gpu and not d.simulated]
    if gpus:
        on_gpu = classifier.build(0).to(gpus[0].torch)

        def gpu_loop():
            out = [classifier._forward(on_gpu, b).cpu() for b in batches]
            torch.cuda.synchronize()
            return out

        unfused = devicejoblib.kernel(classifier._forward)
        unfused.cuda(library="torch")(classifier._forward)
        unfused.setup(lambda device: classifier.build(0).to(device.torch))
        found.update({
            "gpu: one process, hand-written": gpu_loop,
            "gpu: device backend": run(DeviceBackend(placement="cuda:0")),
            "gpu: device backend, unfused": run(DeviceBackend(placement="cuda:0"), unfused),
        })
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-jobs", type=int, default=-1)
    args = parser.parse_args()
    batches = [classifier.images(args.images, seed) for seed in range(args.batches)]
    runs = contenders(batches, args.n_jobs)
    expected = runs["cpu: one process, torch's threads"]()
    times = {name: [] for name in runs}
    for go in runs.values():
        go()  # warm-up: workers started, models built
    for _ in range(args.rounds):
        for name, go in runs.items():
            start = time.perf_counter()
            out = go()
            times[name].append(time.perf_counter() - start)
            assert all(torch.allclose(o.cpu(), e, atol=1e-4) for o, e in zip(out, expected))
    images = args.batches * args.images
    print(f"{args.batches} batches of {args.images} images, {args.rounds} rounds, "
          f"n_jobs={args.n_jobs}, torch {torch.__version__}, "
          f"{devicejoblib.cpu_count()} CPUs")
    medians = {name: statistics.median(t) for name, t in times.items()}
    best_cpu = max(images / medians[n] for n in ("cpu: one process, torch's threads",
                                                  "cpu: joblib loky"))
    print(f"{'contender':<34}{'images/s':>10}{'vs best other':>15}")
    for name, seconds in medians.items():
        rate = images / seconds
        base = best_cpu if name.startswith("cpu") else images / medians.get(
            "gpu: one process, hand-written", seconds)
        print(f"{name:<34}{rate:10.0f}{rate / base:15.2f}")


if __name__ == "__main__":
    main()
