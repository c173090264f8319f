"""The ``devicejoblib`` command: ``devicejoblib info [--json]``, ``devicejoblib bench
[...]``, ``devicejoblib calibrate [...]`` and ``devicejoblib model show|reset|path``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings
from importlib import metadata

from . import _bench, _calibrate
from ._devices import SIMULATE_GPUS_ENV, discover
from ._utils import format_bytes
from ._version import __version__

_PACKAGES = ("joblib", "numpy", "numba", "cupy", "torch")
_COLUMNS = ("device", "name", "memory", "free", "SMs", "cores", "CC", "simulated")


def main(argv=None):
    """Entry point of the console script; returns the exit status."""
    parser = argparse.ArgumentParser(prog="devicejoblib", description=__doc__)
    parser.add_argument("--version", action="version", version=f"devicejoblib {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="versions and the table of this machine's devices")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    bench = commands.add_parser(
        "bench", help="time a reference workload on CPU and GPU workers over a range of sizes")
    _bench.add_arguments(bench)
    calibrate = commands.add_parser(
        "calibrate", help="measure this machine's GPU and write its timing profile, for "
                          "simulated GPUs (DEVICEJOBLIB_SIMULATED_PROFILE)")
    _calibrate.add_arguments(calibrate)
    model = commands.add_parser(
        "model", help="the learnt placement model: show it, reset it, or print its path")
    model.add_argument("action", choices=("show", "reset", "path"))
    model.add_argument("--json", action="store_true", help="show: print one JSON object")
    args = parser.parse_args(argv)
    try:
        if args.command == "bench":
            _bench.run(args)
            return 0
        if args.command == "calibrate":
            _calibrate.run(args)
            return 0
        if args.command == "model":
            print(model_command(args.action, args.json))
            return 0
        report = info_report()
    except ValueError as exc:  # a bad DEVICEJOBLIB_* setting or option value
        print(f"devicejoblib: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_info(report))
    return 0


def model_command(action, as_json=False):
    """What ``devicejoblib model <action>`` prints."""
    from .policy import model_store as _model_store
    from .policy.placement import format_per_call

    if action == "path":
        path = _model_store.model_path()
        return str(path) if path else f"off ({_model_store.MODEL_PATH_ENV}=off)"
    if action == "reset":
        path = _model_store.reset()  # a ValueError (an exit status of 2) if it cannot
        return f"deleted {path}" if path else "nothing to reset: the model is off"
    shown = _model_store.describe()
    if as_json:
        return json.dumps(shown, indent=2)
    if shown["path"] is None:
        return f"the placement model is off ({_model_store.MODEL_PATH_ENV}=off)"
    lines = [f"placement model {shown['path']}, host {shown['host']}"]
    if not shown["histories"] and not shown["launch_sizes"]:
        lines.append("  nothing learnt yet")
    for row in shown["histories"]:
        lines.append(f"  {row['kernel']} on {row['device']}, size ~{row['size']}: "
                     f"{format_per_call(row['seconds_per_call'])} "
                     f"({row['how']}, {row['samples']} samples)")
    for row in shown["launch_sizes"]:
        lines.append(f"  {row['kernel']} on {row['device']}: launches of "
                     f"{row['launch_size']} calls")
    return "\n".join(lines)


def info_report():
    """Versions, CUDA state and devices of this machine, as a JSON-ready dict."""
    with warnings.catch_warnings():  # the report carries the warning's text as a note
        warnings.simplefilter("ignore")
        found = discover()
    return {
        "devicejoblib": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "packages": {name: _version_of(name) for name in _PACKAGES},
        "numba_cuda_simulator": os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1",
        "cuda": found.cuda_versions,
        "notes": list(found.notes),
        "devices": [d.to_dict() for d in found.devices],
    }


def format_info(report):
    """The human-readable form of :func:`info_report`."""
    lines = [f"devicejoblib {report['devicejoblib']} on Python {report['python']}, "
             f"{report['platform']}"]
    lines += [f"  {name:<7}{version or 'not installed'}"
              for name, version in report["packages"].items()]
    cuda = report["cuda"]
    if cuda:
        lines.append("  CUDA   " + ", ".join(f"{k} {v}" for k, v in cuda.items()))
    if report["numba_cuda_simulator"]:
        lines.append("  Numba's CUDA simulator is enabled (NUMBA_ENABLE_CUDASIM=1)")
    rows = [_row(d) for d in report["devices"]]
    widths = [max(len(str(r[i])) for r in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    lines.append("")
    lines += ["  ".join(f"{cell:<{w}}" for cell, w in zip(r, widths)).rstrip()
              for r in [_COLUMNS, *rows]]
    if not any(d["is_gpu"] for d in report["devices"]):
        lines.append(f"\nNo GPU: calls run on the CPU. Try {SIMULATE_GPUS_ENV}=2 to simulate "
                     "two GPUs.")
    lines += [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def _row(device):
    cc = device["compute_capability"]
    return (device["id"], device["name"], format_bytes(device["memory_total"]),
            format_bytes(device["memory_free"]), device["multiprocessor_count"] or "-",
            device["cores"] or "-", ".".join(map(str, cc)) if cc else "-",
            f"yes, {device['timing']}" if device["simulated"] else "no")


def _version_of(module):
    """Installed version of the distribution providing ``module``, without importing it."""
    for dist in metadata.packages_distributions().get(module, [module]):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return version if dist == module else f"{version} ({dist})"
    return None
