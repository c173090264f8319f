"""``devicejoblib bench``: a reference workload over a range of problem sizes, run with
each placement (CPU workers, GPU workers, learned ``auto``), timed side by side, then a
mixed workload (the smallest and largest sizes interleaved); a table, the CPU/GPU
crossover, JSON results and a plot."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from ._devices import devices, simulate_gpus
from ._version import __version__

PLACEMENTS = ("cpu", "gpu", "auto")
#: Seconds of timed runs the fastest placement gets at least at each point (rounds are
#: added, up to MAX_ROUNDS: a run of 20 ms is at the mercy of the machine).
MIN_TIMED, MAX_ROUNDS = 0.5, 20


@dataclass(frozen=True)
class Workload:
    """A reference workload: what its size means and how to make its calls."""

    name: str
    size_means: str
    sizes: tuple[int, ...]
    calls: int
    make: object  # (size, n_calls) -> list of (kernel, args)


def _mlp_calls(size, n):
    import numpy as np

    from .kernels import mlp

    rng = np.random.default_rng(size)
    return [(mlp.infer, (rng.standard_normal((size, mlp.LAYERS[0])).astype("float32"),))
            for _ in range(n)]


def _classifier_calls(size, n):
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise ValueError("Invalid --workload classifier: it needs PyTorch, which is not "
                         "installed (pip install 'devicejoblib[torch]')")
    from .kernels import classifier

    return [(classifier.classify, (classifier.images(size, seed),)) for seed in range(n)]


def _bandit_calls(size, n):
    from .kernels import bandit

    return [(bandit.play, ([0.2, 0.4, 0.6, 0.8], "ucb1", size, seed)) for seed in range(n)]


def _saxpy_calls(size, n):
    import numpy as np

    from .kernels import saxpy

    rng = np.random.default_rng(size)
    return [(saxpy, (float(i), rng.random(size), rng.random(size))) for i in range(n)]


def _logistic_calls(size, n):
    from .kernels import logistic_map

    return [(logistic_map, (0.1 + i / (2 * n), 3.7, size)) for i in range(n)]


#: The workloads ``devicejoblib bench --workload`` knows; the first is the default.
WORKLOADS = {w.name: w for w in (
    Workload("mlp", "rows per input batch", (16, 64, 256, 1024, 4096), 200, _mlp_calls),
    Workload("bandit", "horizon (pulls per run)", (50, 200, 800), 100, _bandit_calls),
    Workload("saxpy", "elements per vector", (100, 1000, 10000, 100000), 300, _saxpy_calls),
    Workload("logistic", "map iterations per call", (10, 100, 1000), 500, _logistic_calls),
    Workload("classifier", "images per batch (PyTorch)", (4, 32, 256), 100,
             _classifier_calls),
)}


def _check_output(path, option, suffixes):
    """Refuse an output path the results could not be written to, naming it."""
    if path is None:
        return
    target = Path(path).expanduser()
    if target.suffix.lower() not in suffixes:
        raise ValueError(f"Invalid {option}={path!r}: expected a file ending in "
                         f"{' or '.join(suffixes)}")
    if target.is_dir() or not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
        raise ValueError(f"Invalid {option}={path!r}: not a file that can be written here "
                         "(its folder must exist and be writable)")


def add_arguments(parser):
    """The options of ``devicejoblib bench``."""
    parser.add_argument("--workload", choices=list(WORKLOADS), default=next(iter(WORKLOADS)))
    parser.add_argument("--sizes", type=sizes_list, help="comma-separated problem sizes")
    parser.add_argument("--calls", type=positive_integer, help="calls per point")
    parser.add_argument("--n-jobs", type=int, default=-1, help="as Parallel's (default -1)")
    parser.add_argument("--repeat", type=positive_integer, default=2,
                        help=f"timed runs per point at least (more, up to {MAX_ROUNDS}, "
                        f"while the fastest placement's add up to under {MIN_TIMED} s), "
                        "the placements taking turns; the median counts (default 2)")
    parser.add_argument("--simulate-gpus", type=int, default=None, metavar="N",
                        help="simulated GPUs (default: 2 when this machine has no GPU)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG plot (needs matplotlib)")
    parser.add_argument("--explain", action="store_true",
                        help="after the table, why each auto point's calls went where")


def run(args):
    """Run the benchmark that ``args`` describe; print the table; return the results."""
    _check_output(args.json, "--json", (".json",))  # before the run, not after it
    _check_output(args.plot, "--plot", (".png",))
    workload = WORKLOADS[args.workload]
    sizes = args.sizes or workload.sizes
    n_calls = args.calls or workload.calls
    with simulate_gpus.unless_real(args.simulate_gpus) as simulation:
        machine = devices()
        placements = PLACEMENTS if any(d.is_gpu for d in machine) else ("cpu",)
        points = [(size, placement) for size in sizes for placement in placements]
        if len(placements) > 1 and len(sizes) > 1:  # small and large calls interleaved
            points += [("mixed", placement) for placement in placements]
        rows = _measure(workload, points, n_calls, args)
    sized = [r for r in rows if r["size"] != "mixed"]
    results = {
        "devicejoblib": __version__, "python": platform.python_version(),
        "workload": workload.name, "size_means": workload.size_means, "calls": n_calls,
        "n_jobs": args.n_jobs, "devices": [d.to_dict() for d in machine],
        "simulated_gpus": simulation.n, "crossover": crossover(sized), "rows": sized,
        "simulated_timing": next((d.timing for d in machine if d.simulated), None),
        "mixed": [r for r in rows if r["size"] == "mixed"],
    }
    print(format_table(results))
    if getattr(args, "explain", False):
        for row in rows:
            if "explain" in row:
                print(f"\nsize {row['size']}, auto (the whole run, warm-up included):")
                print(row["explain"])
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    if args.plot:
        plot(results, args.plot)
    return results


def _measure(workload, points, n_calls, args):
    from .observe.progress import Progress

    sizes = sorted({size for size, _ in points if size != "mixed"})
    by_size = {}  # size -> its placements, in the order of the points
    for size, placement in points:
        by_size.setdefault(size, []).append(placement)
    rows, bar = [], Progress(desc=f"devicejoblib bench {workload.name}", unit="points")
    for size, placements in by_size.items():
        calls = _calls(workload, size, sizes, n_calls)
        for row in _measure_side_by_side(calls, placements, args):
            rows.append({"size": size, **row})
            bar.update(1, row["placement"], total=len(points))
    bar.close()
    cpu = {r["size"]: r["seconds"] for r in rows if r["placement"] == "cpu"}
    for r in rows:
        r["speedup_vs_cpu"] = cpu[r["size"]] / r["seconds"]
    return rows


def _measure_side_by_side(calls, placements, args):
    """A row per placement for one point's ``calls``: each placement's backend warmed up,
    then timed runs taking turns (``args.repeat`` rounds of one run each, more while the
    fastest placement's runs add up to less than ``MIN_TIMED``; a different placement
    first in each round), so that the machine's slow moments fall on all of them alike.
    The median run of each counts, not the best: joblib looks for finished results every
    10 ms, so a run of 30 ms lasts 21, 31 or 42 ms by luck."""
    from ._backend import DeviceBackend
    from ._safe_import import Parallel, delayed

    with contextlib.ExitStack() as stack:
        runs = []  # (placement, backend, parallel)
        for placement in placements:
            backend = DeviceBackend(placement=placement)
            stack.callback(backend.shutdown)
            parallel = stack.enter_context(Parallel(n_jobs=args.n_jobs, backend=backend))
            parallel(delayed(k)(*a) for k, a in calls[:max(len(calls) // 10, 1)])  # warm up
            runs.append((placement, backend, parallel))
        times, before = {placement: [] for placement in placements}, {}
        rounds, round_ = args.repeat, 0
        while round_ < rounds:
            first = round_ % len(runs)
            for placement, backend, parallel in runs[first:] + runs[:first]:
                before[placement] = backend.report()
                start = time.perf_counter()
                parallel(delayed(k)(*a) for k, a in calls)
                times[placement].append(time.perf_counter() - start)
            if round_ == 0:  # short runs are noisy: more rounds, up to MAX_ROUNDS
                rounds = max(rounds, min(MAX_ROUNDS, math.ceil(
                    MIN_TIMED / max(min(t[0] for t in times.values()), 1e-9))))
            round_ += 1
        rows = []
        for placement, backend, _ in runs:
            seconds, earlier, report = statistics.median(times[placement]), \
                before[placement], backend.report()
            ran_on = {device: r["calls"] - earlier.get(device, {}).get("calls", 0)
                      for device, r in report.items()}  # in the last timed run
            gpus = [r for r in report.values() if "working_seconds" in r]
            busy = sum(r["seconds"] for r in gpus)
            waited = busy - sum(r["working_seconds"] for r in gpus)
            rows.append({"placement": placement, "seconds": seconds,
                         "calls_per_second": len(calls) / seconds,
                         "ms_per_call": 1e3 * seconds / len(calls), "ran_on": ran_on,
                         # of the GPU workers' busy time, the share their cost timer
                         # left out (waits for the GIL, a core, I/O), over all runs
                         "gpu_waiting": waited / busy if busy else None})
            if placement == "auto":
                rows[-1]["explain"] = backend.explain()
        return rows


def _calls(workload, size, sizes, n_calls):
    """A point's calls: of one size, or "mixed" (the smallest and largest interleaved)."""
    if size != "mixed":
        return workload.make(size, n_calls)
    small = workload.make(sizes[0], (n_calls + 1) // 2)
    large = workload.make(sizes[-1], n_calls // 2)
    return [c for pair in zip(small, large) for c in pair] + small[len(large):]


def crossover(rows):
    """The size from which the GPU placement stays faster, after a smaller size where the
    CPU was as fast or faster; None when one placement wins at every size."""
    speedups = sorted((r["size"], r["speedup_vs_cpu"]) for r in rows
                      if r["placement"] == "gpu")
    for i, (size, _) in enumerate(speedups):
        if all(s > 1 for _, s in speedups[i:]):
            return size if i > 0 else None
    return None


def _verdict(rows, point):
    gpu = [r["speedup_vs_cpu"] for r in rows if r["placement"] == "gpu"]
    if point is not None:
        return f"crossover: the GPU placement is faster from size {point} up"
    if all(s > 1 for s in gpu):
        return "no crossover: the GPU placement is faster at every size measured"
    return "no crossover: the GPU placement does not stay faster at the top of this range"


def format_table(results):
    """The results as the table ``devicejoblib bench`` prints."""
    gpus = [d for d in results["devices"] if d["is_gpu"]]
    names = ", ".join(d["id"] + (" (simulated)" if d["simulated"] else "") for d in gpus)
    timing = results.get("simulated_timing") or "no timing profile"
    lines = [f"devicejoblib bench: {results['workload']}, size = {results['size_means']}; "
             f"{results['calls']} calls per point, n_jobs={results['n_jobs']}",
             f"GPUs: {names or 'none'}"]
    if results["simulated_gpus"]:
        if timing == "no timing profile":
            lines.append("NOTE: the GPUs are SIMULATED (host threads running NumPy), with no "
                         "timing profile: these figures show dispatch, not GPU speed.")
        else:
            lines.append(f"NOTE: the GPUs are SIMULATED (host threads running NumPy), costed "
                         f"by the {timing}: these figures model that GPU, they were not "
                         "measured on it.")
    header = ("size", "placement", "calls/s", "ms/call", "vs cpu", "ran on")
    table = [header] + [
        (str(r["size"]), r["placement"], f"{r['calls_per_second']:.0f}",
         f"{r['ms_per_call']:.3f}", f"{r['speedup_vs_cpu']:.2f}x",
         ", ".join(f"{d}: {n}" for d, n in r["ran_on"].items())
         + ("   <- crossover" if r["placement"] == "gpu"
            and r["size"] == results["crossover"] else ""))
        for r in results["rows"] + results.get("mixed", [])]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines.append("")
    lines += ["  ".join([*(cell.rjust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip()
              for row in table]
    if any(r["placement"] == "gpu" for r in results["rows"]):
        lines.append("\n" + _verdict(results["rows"], results["crossover"]))
    if results.get("mixed"):
        best = min(results["mixed"], key=lambda r: r["seconds"])
        lines.append(f"mixed (sizes {results['rows'][0]['size']} and "
                     f"{results['rows'][-1]['size']} interleaved): fastest {best['placement']}")
    return "\n".join(lines)


def plot(results, path):
    """Throughput against size, one line per placement, the crossover marked (PNG)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit("devicejoblib bench --plot needs matplotlib: "
                         "pip install 'devicejoblib[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for placement in dict.fromkeys(r["placement"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["placement"] == placement]
        label = placement + (f" (simulated GPUs, {results.get('simulated_timing')})"
                             if placement == "gpu" and results["simulated_gpus"] else "")
        ax.plot([r["size"] for r in rows], [r["calls_per_second"] for r in rows], "o-",
                label=label)
    if results["crossover"] is not None:
        ax.axvline(results["crossover"], color="grey", linestyle="--",
                   label=f"crossover: size {results['crossover']}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"size: {results['size_means']}")
    ax.set_ylabel("calls per second")
    ax.set_title(f"devicejoblib bench: {results['workload']}, "
                 f"{results['calls']} calls per point")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def positive_integer(text):
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def sizes_list(text):
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        import argparse

        raise argparse.ArgumentTypeError(
            f"invalid sizes {text!r}: expected positive integers separated by commas, "
            "such as 100,1000,10000")
    return tuple(sorted(set(sizes)))
