"""Soak: many Parallel calls in one parallel_config block, mixed CPU and (simulated) GPU
routes, with faults — calls that raise, calls that outlive a timeout — and a check that
threads and memory stay flat and that no result is lost, duplicated or reordered.

    python benchmarks/soak.py [--rounds 1000] [--calls 1000] [--simulate-gpus 2]
                              [--lose-gpu-after LAUNCHES] [--gpu-memory 4MiB]

Every tenth round one call raises, every fiftieth a call outlives its round's timeout,
every tenth (another) runs out of GPU memory: fused launches of arrays up to the simulated
GPUs' size (``--gpu-memory``), and one call too big for a GPU even alone, which must run
on the CPU; the other rounds must return exactly their inputs' results, in order. With
``--lose-gpu-after``, the last simulated GPU is lost after that many launches of its
worker (fault injection): its unfinished calls must run elsewhere, once. Prints threads and
resident memory (RSS) at the start, every tenth of the run and at the end.
"""

import argparse
import contextlib
import gc
import os
import threading
import time
import warnings
from multiprocessing import TimeoutError

import numpy as np
from joblib import Parallel, delayed, parallel_config

import devicejoblib
from devicejoblib import kernel


@kernel
def square(x):
    return x * x


@square.cuda
def _(x):
    return x * x


@kernel(portable=True)
def doubled(x):
    return x * 2


@doubled.batched
def _(x):
    return x * 2


class Fault(RuntimeError):
    """The error a round injects."""


def faulty(x, bad):
    if x == bad:
        raise Fault(f"injected at {x}")
    return x * x


def sleeper(x, seconds):
    time.sleep(seconds)
    return x * x


def rss_mib():
    """Resident memory of this process (Linux), in MiB."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def one_round(r, calls):
    """Run one round; returns (kind, ok) where ok says the outcome was the right one."""
    inputs = range(r * calls, (r + 1) * calls)
    expected = [x * x for x in inputs]
    if r % 50 == 49:  # a GPU call outlives the timeout (not twice over): TimeoutError
        try:
            Parallel(timeout=0.2)(delayed(sleeper)(x, 0.3 if x == inputs[0] else 0)
                                  for x in inputs)
        except TimeoutError:
            return "timeout", True
        return "timeout", False
    if r % 10 == 9:  # one call raises: its error, nothing else
        try:
            Parallel()(delayed(faulty)(x, inputs[calls // 2]) for x in inputs)
        except Fault:
            return "error", True
        return "error", False
    if r % 10 == 4:  # out of GPU memory: launches split, one call runs on the CPU
        sizes = [OOM_ARRAY] * (calls // 10)
        sizes[len(sizes) // 2] = 2 * GPU_MEMORY  # not even alone
        arrays = [np.full(n // 8, float(x)) for n, x in zip(sizes, inputs)]
        out = Parallel()(delayed(doubled)(a) for a in arrays)
        ok = [o.size for o in out] == [a.size for a in arrays] and all(
            (o == 2 * a[0]).all() for o, a in zip(out, arrays))
        return "oom", ok
    # kernels go to the GPUs, plain functions to loky: one batch may hold both
    mixed = [delayed(square)(x) if x % 3 else delayed(faulty)(x, -1) for x in inputs]
    return_as = RETURN_AS[r % len(RETURN_AS)]
    out = list(Parallel(return_as=return_as)(mixed))
    if return_as == "generator_unordered":
        out.sort()
    return "ok", out == expected


RETURN_AS = ("list", "generator", "generator_unordered")
GPU_MEMORY = 4 * 2**20  # of each simulated GPU (--gpu-memory)
OOM_ARRAY = 2**18  # bytes of each array of an out-of-memory round


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--simulate-gpus", type=int, default=None)
    parser.add_argument("--lose-gpu-after", type=int, default=None)
    parser.add_argument("--gpu-memory", default="4MiB")
    args = parser.parse_args()
    every = max(args.rounds // 10, 1)
    outcomes = {"ok": [0, 0], "error": [0, 0], "timeout": [0, 0], "oom": [0, 0]}
    with contextlib.ExitStack() as stack:
        simulation = stack.enter_context(
            devicejoblib.simulate_gpus.unless_real(args.simulate_gpus))
        if simulation.n:
            stack.enter_context(devicejoblib.simulate_gpus(
                simulation.n, memory=args.gpu_memory, lose_after=None
                if args.lose_gpu_after is None else {simulation.n - 1: args.lose_gpu_after}))
            global GPU_MEMORY
            GPU_MEMORY = next(d for d in devicejoblib.devices() if d.is_gpu).memory_total
        # the call too big for a GPU warns once that it runs on the CPU
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", "doubled does not fit", RuntimeWarning)
        gpus = [str(d) for d in devicejoblib.devices() if d.is_gpu]
        print(f"{args.rounds} rounds x {args.calls} calls, n_jobs=2, GPUs: "
              f"{', '.join(gpus) or 'none'}")
        print(f"{'round':>6}{'threads':>9}{'RSS MiB':>9}{'seconds':>9}")
        start = time.perf_counter()
        with parallel_config(backend="device", n_jobs=2):
            for r in range(args.rounds):
                if r % every == 0:
                    gc.collect()
                    print(f"{r:>6}{threading.active_count():>9}{rss_mib():>9.1f}"
                          f"{time.perf_counter() - start:>9.1f}", flush=True)
                kind, ok = one_round(r, args.calls)
                outcomes[kind][0 if ok else 1] += 1
        time.sleep(1.0)  # calls left running by the last timeouts end
        gc.collect()
        print(f"{'end':>6}{threading.active_count():>9}{rss_mib():>9.1f}"
              f"{time.perf_counter() - start:>9.1f}")
    for kind, (right, wrong) in outcomes.items():
        print(f"{kind:>8}: {right} rounds as expected, {wrong} not")
    if any(wrong for _, wrong in outcomes.values()):
        raise SystemExit("a round lost, duplicated or reordered a result")


if __name__ == "__main__":
    main()
