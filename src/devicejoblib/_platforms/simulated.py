"""Simulated GPUs: host-backed stand-ins that run kernels' GPU implementations with
NumPy, one worker thread each, so that everything above the devices runs on a CPU."""

from __future__ import annotations

import functools
import threading
import time

from .host import HostComputePlatform

_launches = threading.local()


class SimulatedDeviceLost(RuntimeError):
    """An injected fault: a simulated GPU stands for one that was lost (sticky)."""


class SimulatedGPUPlatform(HostComputePlatform):
    """GPUs made on request (``DEVICEJOBLIB_SIMULATE_GPUS``), never discovered.

    A launch is timed by the worker thread's CPU time (the other simulated GPUs' turns at
    the GIL do not count) plus the device's ``launch_latency``, which each launch sleeps.
    Results kept on the device come back as :class:`~devicejoblib.SimulatedDeviceArray`.
    """

    name = "simulator"
    kind = "cuda"
    spellings = ("cuda", "gpu")
    runs = "cuda"
    simulated = True

    def probe(self, count=0, memory=0, latency=0.0, multiprocessors=None, lose_after=None,
              **settings):
        lose_after = lose_after or {}
        return [{"index": i, "name": "simulated GPU", "memory_total": memory,
                 "memory_free": memory, "multiprocessor_count": multiprocessors,
                 "launch_latency": latency, "lose_after": lose_after.get(i)}
                for i in range(count)], {}

    def bind(self, device):
        _launches.count = 0  # fault injection counts each worker thread's launches
        return super().bind(device)

    def is_available(self):
        from .._devices import devices

        try:
            return any(d.platform is self for d in devices())
        except Exception:  # a malformed DEVICEJOBLIB_SIMULATE_GPUS: devices() says so
            return False

    def start_timer(self, device):
        start, latency = time.thread_time(), device.launch_latency
        return lambda: time.thread_time() - start + latency

    def simulate_launch(self, device):
        if device.lose_after is not None:
            _launches.count = getattr(_launches, "count", 0) + 1
            if _launches.count > device.lose_after:
                raise SimulatedDeviceLost(
                    f"{device} was lost after {device.lose_after} launches (fault "
                    "injected by DEVICEJOBLIB_SIMULATED_LOSS or simulate_gpus(lose_after=))")
        if device.launch_latency:
            time.sleep(device.launch_latency)  # like a real launch and sync: GIL released

    def is_device_lost(self, error):
        return isinstance(error, SimulatedDeviceLost)

    def to_host(self, result, device, keep_on_device=False):
        arrays = _arrays()
        if not isinstance(result, arrays.np.ndarray):
            return result
        if not keep_on_device:
            return result.view(arrays.np.ndarray)
        return arrays.SimulatedDeviceArray.kept(result, device.id)

    def array_types(self):
        arrays = _arrays()
        return (arrays.SimulatedDeviceArray,) if arrays.kept_any else ()

    def home_of(self, value):
        return value.device_id



@functools.cache
def _arrays():
    """The simulator's arrays, imported on first use (they import NumPy)."""
    from . import simulated_arrays

    return simulated_arrays
