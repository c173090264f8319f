"""Simulated GPUs: host-backed stand-ins that run kernels' GPU implementations with
NumPy, one worker thread each, so that everything above the devices runs on a CPU."""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
import weakref

from .._utils import format_bytes
from ..arrays import ArrayLibrary, get_array_library
from ..arrays.torch_library import SIMULATED_HOME
from . import simulated_clock as clocks
from .base import thread_timer
from .host import HostComputePlatform

_launches = threading.local()


class SimulatedDeviceLost(RuntimeError):
    """An injected fault: a simulated GPU stands for one that was lost (sticky)."""


class SimulatedOutOfMemory(MemoryError):
    """A simulated GPU's memory cannot hold a launch's arrays (as CuPy's
    ``OutOfMemoryError`` on a real one)."""


class _Memory:
    """Bytes of the arrays kept on each simulated GPU (``keep_on_device=True``), freed
    when the arrays are."""

    def __init__(self):
        self._lock = threading.Lock()
        self.held = {}  # device id -> bytes
        self._counted = {}  # id of a counted array -> a weak reference to it

    def keep(self, device_id, array):
        """Count ``array`` (the base of a kept result) until it is collected."""
        with self._lock:
            counted = self._counted.get(id(array))
            if counted is not None and counted() is array:
                return  # a kernel returned an array already kept
            self._counted[id(array)] = weakref.ref(array)
            self.held[device_id] = self.held.get(device_id, 0) + array.nbytes
        weakref.finalize(array, self._free, device_id, id(array), array.nbytes)

    def _free(self, device_id, key, nbytes):
        with self._lock:
            self.held[device_id] -= nbytes
            self._counted.pop(key, None)


_memory = _Memory()


class SimulatedGPUPlatform(HostComputePlatform):
    """GPUs made on request (``DEVICEJOBLIB_SIMULATE_GPUS``), never discovered.

    A GPU implementation written for CuPy (the default) gets strict arrays,
    :class:`~devicejoblib.SimulatedDeviceArray`, which refuse what CuPy refuses, and
    ``array_module()`` gives their module; with ``strict_arrays`` off (or for another
    library) it gets NumPy arrays. Results kept on the device come back as
    :class:`~devicejoblib.SimulatedDeviceArray`.

    A launch is timed by the worker thread's CPU time (the other simulated GPUs' turns at
    the GIL do not count), plus the time it waited for the device's clock when the device
    has a timing ``profile`` (each array operation then costs its thread the profile's
    host time, holding the GIL, and the device its device time), plus the device's
    ``launch_latency``, which each launch sleeps.

    Memory is accounted as on a GPU: a launch needs its array arguments and results on
    the device at once, next to the results kept there; past the device's
    ``memory_total`` it raises :class:`SimulatedOutOfMemory` (a ``MemoryError``).

    Its ``is_available()`` is False: simulated GPUs are made on request, never
    discovered (``devicejoblib.is_available("cuda")`` says whether this process
    simulates some).
    """

    name = "simulator"
    kind = "cuda"
    spellings = ("cuda", "gpu")
    runs = "cuda"
    simulated = True

    def probe(self, count=0, memory=0, latency=0.0, multiprocessors=None, lose_after=None,
              strict=True, profile="", **settings):
        lose_after = lose_after or {}
        name = "simulated GPU"
        if profile:
            from .profiles import load_profile

            loaded = load_profile(profile)
            name = f"simulated GPU ({loaded.name} profile)"
            multiprocessors = loaded.multiprocessor_count
        return [{"index": i, "name": name, "memory_total": memory,
                 "memory_free": memory, "multiprocessor_count": multiprocessors,
                 "launch_latency": latency, "lose_after": lose_after.get(i),
                 "strict_arrays": strict, "profile": profile}
                for i in range(count)], {}

    @staticmethod
    def profile_name(profile):
        """The name of the profile a device's ``profile`` setting names."""
        from .profiles import load_profile

        return load_profile(profile).name

    def bind(self, device):
        _launches.count = 0  # fault injection counts each worker thread's launches
        clocks.bind(device)
        clock = clocks.clock_of(device)
        return lambda: clocks.synchronize(clock)

    @contextlib.contextmanager
    def bound(self, device):
        previous = clocks.bind(device)
        try:
            clock = clocks.clock_of(device)
            yield lambda: clocks.synchronize(clock)
        finally:
            clocks.bind(previous)

    def synchronize(self, device=None):
        clocks.synchronize_device(device)

    def start_timer(self, device):
        elapsed, latency = _working_timer(), device.launch_latency
        return lambda: elapsed() + latency

    def start_cost_timer(self, device):
        """The thread's CPU time and its waits for the device's clock with a profile
        (as a real GPU's thread, whose waits spin); the wall clock without."""
        return _working_timer() if device.profile else super().start_cost_timer(device)

    def simulate_launch(self, device, arguments=()):
        _launches.bytes = 0  # the launch's arrays on the device, results to come
        moved = 0
        for value in arguments:  # (a loop: this runs for every simulated call)
            nbytes = getattr(value, "nbytes", None)
            if nbytes is not None and getattr(value, "device_id", None) != device.id:
                moved += nbytes
        if moved:
            self._allocate(device, moved)
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

    def _allocate(self, device, nbytes):
        """Account for ``nbytes`` more of the current launch's arrays on ``device``."""
        if not nbytes:
            return
        in_use = getattr(_launches, "bytes", 0) + _memory.held.get(device.id, 0)
        if device.memory_total and in_use + nbytes > device.memory_total:
            raise SimulatedOutOfMemory(
                f"out of memory on {device}: {format_bytes(nbytes)} more with "
                f"{format_bytes(in_use)} of {format_bytes(device.memory_total)} in use "
                "(the size is DEVICEJOBLIB_SIMULATED_MEMORY, or simulate_gpus(memory=))")
        _launches.bytes = getattr(_launches, "bytes", 0) + nbytes

    def to_host(self, result, device, keep_on_device=False):
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(result, torch.Tensor):
            return self._tensor_to_host(result.detach(), device, keep_on_device)
        arrays = _arrays()
        if type(result) is arrays.SimulatedDeviceArray:
            data = arrays.raw(result)
            self._allocate(device, data.nbytes)
            if not keep_on_device:
                return result.get()
        elif isinstance(result, arrays.np.ndarray):
            if device.strict_arrays:
                return result  # a NumPy array is the host's here (the call got it there)
            data = result
            self._allocate(device, data.nbytes)
            if not keep_on_device:
                return result
        else:
            return result
        base = data
        while isinstance(base.base, arrays.np.ndarray):
            base = base.base
        _memory.keep(device.id, base)
        return arrays.SimulatedDeviceArray.kept(result, device.id)

    def _tensor_to_host(self, tensor, device, keep_on_device):
        """A torch implementation's result (a CPU tensor standing for a CUDA one): on
        the host, or kept, marked as living on ``device`` (its data affinity)."""
        self._allocate(device, tensor.nbytes)
        if keep_on_device:
            _memory.keep(device.id, tensor)
            setattr(tensor, SIMULATED_HOME, device.id)
        return tensor

    def library_for(self, device=None, name=None):
        if name == "torch":
            return SIMULATED_TORCH
        if name is not None:
            get_array_library(name)  # an unknown name fails here as on a real GPU
        device = device or clocks.bound_device()
        strict = device is None or device.strict_arrays
        # strict arrays stand for CuPy's; other libraries' implementations get NumPy
        return STRICT_ARRAYS if strict and name in (None, "cupy") else SIMULATED_ARRAYS


class SimulatedArrays(ArrayLibrary):
    """What a GPU implementation gets on a simulated GPU without strict arrays (or
    written for another library than CuPy): NumPy arrays; results kept on the device
    come back as :class:`~devicejoblib.SimulatedDeviceArray` (which send later calls to
    that device, as a CuPy array would)."""

    name = "simulated"
    serves = ("cuda",)

    def module(self):
        return _arrays().np

    def array_types(self):
        arrays = _arrays()
        return (arrays.SimulatedDeviceArray,) if arrays.kept_any else ()

    def home_of(self, value):
        return value.device_id

    def to_device(self, value):
        return _arrays().raw(value)  # (a kept array's data, as NumPy)

    def to_host(self, value, keep_on_device=False):
        return value  # (the simulated platform's to_host accounts for its memory)

    def synchronize(self):
        clocks.synchronize_device()


class StrictSimulatedArrays(SimulatedArrays):
    """What a GPU implementation written for CuPy gets on a simulated GPU: arrays that
    refuse what CuPy refuses (:class:`~devicejoblib.SimulatedDeviceArray`), and a module
    of NumPy's functions under CuPy's rules."""

    name = "simulated-strict"

    def module(self):
        _arrays()
        from .simulated_xp import SIMULATED_CUPY

        return SIMULATED_CUPY

    def to_device(self, value):
        device = clocks.bound_device()
        return _arrays().to_device(value, device) if device is not None else value


class SimulatedTorch(ArrayLibrary):
    """What a torch implementation gets on a simulated GPU: CPU tensors standing for
    CUDA ones (NumPy arrays become tensors); results kept on the device are marked with
    it (data affinity), and come back detached."""

    name = "simulated-torch"
    serves = ("cuda",)

    def module(self):
        import torch

        return torch

    def to_device(self, value):
        import numpy as np

        if isinstance(value, np.ndarray):
            import torch

            return torch.from_numpy(value.copy())  # (a copy, as a real GPU's)
        return value

    def stack(self, values):
        import torch

        return torch.stack([v if isinstance(v, torch.Tensor) else torch.as_tensor(v)
                            for v in values])

    def empty_like(self, array):
        import torch

        return torch.empty_like(array)


SIMULATED_ARRAYS = SimulatedArrays()
STRICT_ARRAYS = StrictSimulatedArrays()
SIMULATED_TORCH = SimulatedTorch()


def _working_timer():
    """A function giving the calling thread's CPU seconds and waits for simulated
    devices since this call."""
    cpu, waited = thread_timer(), clocks.waited()
    return lambda: cpu() + clocks.waited() - waited


@functools.cache
def _arrays():
    """The simulator's arrays, imported on first use (they import NumPy)."""
    from . import simulated_arrays

    return simulated_arrays
