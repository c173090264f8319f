"""``devicejoblib calibrate``: measure a GPU's timing profile (what simulated GPUs cost
their work by) and write it as a profile file.

On a real GPU it times CuPy: the host time an array operation holds its thread for, the
device time of the smallest kernel, device memory bandwidth, a float32 matrix product's
throughput, and host-device copies (fixed cost and bandwidth) — medians after a warm-up,
device times by CUDA events. ``--simulated`` measures a simulated GPU the same way (a
check of the simulator: it should give back its profile).
"""

from __future__ import annotations

import datetime
import json
import statistics
import time
from pathlib import Path

from ._devices import devices, simulate_gpus
from ._platforms.profiles import FIELDS, Profile

#: Each field as ``calibrate`` prints it: (unit, scale).
_UNITS = {"host_seconds_per_operation": ("us", 1e6), "kernel_seconds": ("us", 1e6),
          "device_bytes_per_second": ("GB/s", 1e-9), "flops_per_second": ("TFLOPS", 1e-12),
          "host_to_device_bytes_per_second": ("GB/s", 1e-9),
          "device_to_host_bytes_per_second": ("GB/s", 1e-9),
          "transfer_seconds": ("us", 1e6), "memory_bytes": ("GiB", 2**-30),
          "multiprocessor_count": ("", 1)}


def add_arguments(parser):
    parser.add_argument("--output", metavar="FILE",
                        help="write the profile there (default: <name>.json)")
    parser.add_argument("--name", help="the profile's name (default: from the GPU's)")
    parser.add_argument("--device", type=int, default=0, help="GPU index (default 0)")
    parser.add_argument("--repeat", type=int, default=30,
                        help="timed repetitions per figure; the median counts (default 30)")
    parser.add_argument("--size-mib", type=float, default=256.0,
                        help="array size of the bandwidth and copy figures (default 256)")
    parser.add_argument("--simulated", metavar="PROFILE", nargs="?", const="",
                        help="measure a simulated GPU instead (with PROFILE's timing)")


def run(args):
    """Measure, print, and write the profile; its JSON document."""
    if args.repeat < 3 or args.size_mib <= 0:
        raise ValueError(f"Invalid --repeat={args.repeat} or --size-mib={args.size_mib}: "
                         "expected at least 3 repetitions and a positive size")
    if args.simulated is not None:
        with simulate_gpus(max(args.device + 1, 1), profile=args.simulated or None):
            device = _gpu(args.device)
            profile = measure(device, args.repeat, args.size_mib, args.name)
    else:
        with simulate_gpus(0):
            device = _gpu(args.device)
            profile = measure(device, args.repeat, args.size_mib, args.name)
    document = profile.to_json()
    path = Path(args.output or f"{profile.name}.json")
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(format_profile(profile))
    print(f"written to {path} (use it: DEVICEJOBLIB_SIMULATED_PROFILE={path})")
    return document


def _gpu(index):
    gpus = [d for d in devices() if d.is_gpu]
    if index >= len(gpus) or index < 0:
        found = ", ".join(str(d) for d in gpus) or "none"
        raise ValueError(f"Invalid --device={index}: the GPUs of this machine are {found} "
                         "(devicejoblib calibrate measures a real GPU; --simulated measures "
                         "a simulated one)")
    return gpus[index]


def measure(device, repeat=30, size_mib=256.0, name=None):
    """The :class:`Profile` of ``device``, measured through its default array library
    on a thread bound to it."""
    platform = device.platform
    with platform.bound(device) as sync:
        xp = platform.array_module(device)
        timer = _DeviceTimer(xp, sync)
        figures = _measure(xp, sync, timer, repeat, int(size_mib * 2**20) // 4)
    figures["memory_bytes"] = int(device.memory_total or 0)
    figures["multiprocessor_count"] = int(device.multiprocessor_count or 0)
    how = (f"devicejoblib calibrate on {device.name} ({device}), "
           f"{datetime.date.today().isoformat()}, {xp.__name__}: median of {repeat}")
    sources = {f: how for f in FIELDS}
    sources["memory_bytes"] = sources["multiprocessor_count"] = (
        f"the device's attributes as {device.provider} reports them")
    slug = "".join(c if c.isalnum() else "-" for c in device.name.lower()).strip("-")
    return Profile(name=name or slug or "gpu", gpu=device.name, made=how,
                   sources=tuple(sources.items()), **figures)


def _measure(xp, sync, timer, repeat, elements):
    import numpy as np

    tiny, big = xp.ones(1, dtype=xp.float32), xp.ones(elements, dtype=xp.float32)
    n = 4096 if elements >= 4096 * 4096 else max(int((elements // 4) ** 0.5), 16)
    a = xp.ones((n, n), dtype=xp.float32)
    host_small, host_big = np.ones(1, np.float32), np.ones(elements, np.float32)
    ops = 100

    def host_time():  # many small operations, not waited for: the host's share
        sync()
        started = time.perf_counter()
        for _ in range(ops):
            tiny + 1
        seconds = (time.perf_counter() - started) / ops
        sync()
        return seconds

    def copy_time(data, to_device):  # a copy, waited for
        sync()
        started = time.perf_counter()
        xp.asarray(data) if to_device else data.get()
        sync()
        return time.perf_counter() - started

    for _ in range(2):  # warm-up: kernels compiled and loaded, memory pools filled
        host_time(), timer(lambda: tiny + 1), timer(lambda: big * 1), timer(lambda: a @ a)
        copy_time(host_small, True), copy_time(tiny, False)
    median = lambda f: statistics.median(f() for _ in range(repeat))  # noqa: E731
    host = median(host_time)
    small_in, small_out = median(lambda: copy_time(host_small, True)), median(
        lambda: copy_time(tiny, False))
    big_in = median(lambda: copy_time(host_big, True))
    big_out = median(lambda: copy_time(big, False))
    latency = max(min(small_in, small_out), 1e-9)
    return {
        "host_seconds_per_operation": host,
        "kernel_seconds": max(median(lambda: timer(lambda: tiny + 1)), 1e-9),
        "device_bytes_per_second": 2 * big.nbytes / median(lambda: timer(lambda: big * 1)),
        "flops_per_second": 2 * n**3 / median(lambda: timer(lambda: a @ a)),
        "host_to_device_bytes_per_second": host_big.nbytes / max(big_in - latency, 1e-9),
        "device_to_host_bytes_per_second": big.nbytes / max(big_out - latency, 1e-9),
        "transfer_seconds": latency,
    }


class _DeviceTimer:
    """``timer(work)``: the device seconds ``work`` queues — by CUDA events where the
    library has them (CuPy), else by the wall clock around it, waited for, less the
    host's share of launching it."""

    def __init__(self, xp, sync):
        self.sync = sync
        self.events = getattr(getattr(xp, "cuda", None), "Event", None)
        if self.events is not None and not hasattr(self.events(), "record"):
            self.events = None  # (a stand-in without CUDA events)

    def __call__(self, work):
        self.sync()
        if self.events is not None:
            start, end = self.events(), self.events()
            start.record()
            work()
            end.record()
            end.synchronize()
            import cupy

            return cupy.cuda.get_elapsed_time(start, end) / 1e3
        work()
        launched = time.perf_counter()
        self.sync()
        ended = time.perf_counter()
        return max(ended - launched, 1e-9)


def format_profile(profile):
    """The profile as ``calibrate`` prints it: a field a line, with units."""
    lines = [f"profile {profile.name}: {profile.gpu}"]
    for field in FIELDS:
        unit, scale = _UNITS[field]
        value = getattr(profile, field) * scale
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"  {field:<34}{shown:>10} {unit}")
    return "\n".join(lines)

