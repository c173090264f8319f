"""How learned placement times a GPU: the worker thread's CPU time (what CUDA GPUs use)
against the wall clock (what they used before), side by side on the main job's workload.

    python benchmarks/bench_cost_timer.py [--rounds 2] [--calls 200] [--sizes 16,256,4096]

Each variant runs in fresh processes, taking turns (cpu time, wall clock, cpu time, ...),
each with a model file of its own: the GPU's cost timer is set to the variant, then every
size and a mixed workload (the smallest and largest sizes interleaved) is timed with
``placement="gpu"`` and ``placement="auto"`` taking turns, once with the model cold and
once warm. Prints auto / gpu (above 1: auto is faster), the share of auto's calls the
CPU ran, the share of the GPU workers' busy time spent waiting for other threads (the
GIL, a core; under the gpu placement, then auto; about 0 when the wall clock is the
timer that measures it), and the model's prediction for the GPU per call. On a machine
without a GPU the simulated GPUs are timed the two ways instead (their NumPy work is
real CPU work).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import types

VARIANTS = ("cpu time", "wall clock")


def child(args):
    from devicejoblib import devices, simulate_gpus
    from devicejoblib._bench import WORKLOADS, _calls, _measure_side_by_side
    from devicejoblib.policy.placement import device_model

    with simulate_gpus.unless_real(None):
        gpu = next(d for d in devices() if d.is_gpu)
        _set_cost_timer(type(gpu.platform), args.variant)
        workload, sizes = WORKLOADS["mlp"], args.sizes
        settings = types.SimpleNamespace(n_jobs=-1, repeat=args.repeat)
        out = []
        for run in ("cold", "warm"):  # the model is the process's: warm the second time
            for size in [*sizes, "mixed"]:
                calls = _calls(workload, size, sizes, args.calls)
                rows = {r["placement"]: r for r in _measure_side_by_side(
                    calls, ("gpu", "auto"), settings)}
                ran_on = rows["auto"]["ran_on"]
                out.append({"run": run, "size": size,
                            "auto_vs_gpu": rows["gpu"]["seconds"] / rows["auto"]["seconds"],
                            "cpu_share": ran_on.get("cpu", 0) / max(sum(ran_on.values()), 1),
                            "waiting": [rows[p]["gpu_waiting"] for p in ("gpu", "auto")],
                            "gpu_per_call": _gpu_predictions(rows["auto"]["explain"],
                                                             device_model(gpu))})
    print(json.dumps(out))


def _set_cost_timer(platform_class, variant):
    from devicejoblib._platforms.base import thread_timer, wall_timer

    timer = wall_timer if variant == "wall clock" else thread_timer
    platform_class.start_cost_timer = lambda self, device: timer()


def _gpu_predictions(explained, model):
    """The GPU's predicted time per call, as ``explain()`` shows it, for each footprint."""
    return [line.split(": ", 1)[1].split(" (")[0]
            for line in explained.splitlines() if line.strip().startswith(model + ":")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="processes per variant")
    parser.add_argument("--calls", type=int, default=200, help="calls per point")
    parser.add_argument("--sizes", default="16,256,4096")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per point")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.variant:
        return child(args)
    results = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            for variant in VARIANTS:
                env = {**os.environ, "DEVICEJOBLIB_MODEL_PATH":
                       os.path.join(folder, f"{variant.replace(' ', '-')}-{round_}.json")}
                done = subprocess.run(
                    [sys.executable, __file__, "--variant", variant, "--calls",
                     str(args.calls), "--sizes", ",".join(map(str, args.sizes)),
                     "--repeat", str(args.repeat)],
                    env=env, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{variant}, round {round_ + 1} failed:\n{done.stderr}")
                rows = json.loads(done.stdout.strip().splitlines()[-1])
                results[variant].append(rows)
                print(f"{variant}, process {round_ + 1}:")  # (kept if a later one hangs)
                print_rows([(variant, [row]) for row in rows], flush=True)
    print(f"\nauto/gpu and cpu share: medians of {args.rounds} processes per variant; "
          "gpu waits and gpu per call: the last process's")
    print_rows((variant, list(rows)) for variant, runs in results.items()
               for rows in zip(*runs))


def print_rows(rows, flush=False):
    """A line per ``(variant, [the same point's row in each process])``: auto / gpu
    (above 1: auto faster), the CPU's share of auto's calls, the GPU's predicted time
    per call (the last process's)."""
    print(f"{'variant':<11}{'model':<6}{'size':>6}{'auto/gpu':>10}{'cpu share':>11}"
          f"{'gpu waits (gpu, auto)':>23}  gpu per call")
    for variant, same in rows:
        row = same[-1]
        waits = ", ".join("-" if w is None else f"{w:.2f}" for w in row["waiting"])
        print(f"{variant:<11}{row['run']:<6}{row['size']!s:>6}"
              f"{statistics.median(r['auto_vs_gpu'] for r in same):10.2f}"
              f"{statistics.median(r['cpu_share'] for r in same):11.2f}{waits:>23}  "
              f"{', '.join(row['gpu_per_call'])}", flush=flush)


if __name__ == "__main__":
    main()
