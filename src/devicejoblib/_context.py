"""Where the current thread runs calls: the CPU, or the GPU its worker thread is bound to."""

from __future__ import annotations

import contextlib
import threading

_local = threading.local()
_numba_simulator_lock = threading.Lock()


class _Binding:
    """What a GPU worker thread sets for the calls it runs."""

    def __init__(self, device, keep_on_device=False):
        self.device = device
        self.keep_on_device = keep_on_device


def bind_thread(device, keep_on_device=False):
    """Bind the calling thread (a GPU worker) to ``device`` for every call it runs."""
    _local.binding = _Binding(device, keep_on_device)


def binding():
    """The calling thread's binding, or None on a thread that runs CPU calls."""
    return getattr(_local, "binding", None)


def current_device():
    """The device the calling code runs on.

    Inside a call that devicejoblib runs on a GPU (real or simulated) this is that
    GPU's :class:`~devicejoblib.Device`; everywhere else it is the CPU device.
    """
    bound = binding()
    if bound is not None:
        return bound.device
    from ._devices import cpu_device

    return cpu_device()


def array_module():
    """NumPy or CuPy: the array module for the device the calling code runs on.

    CuPy on a real GPU's worker thread; NumPy on the CPU and on simulated GPUs. Write a
    kernel once against ``xp = array_module()`` and it runs on either.
    """
    bound = binding()
    if bound is not None and not bound.device.simulated:
        import cupy

        return cupy
    import numpy

    return numpy


def numba_cuda_lock():
    """Hold this around a Numba CUDA launch that may run on a simulated GPU.

    Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) has one device and cannot run
    two kernels at once: on simulated GPUs every launch takes one process-wide lock.
    On a real GPU it is a no-op context manager.
    """
    bound = binding()
    if bound is not None and not bound.device.simulated:
        return contextlib.nullcontext()
    return _numba_simulator_lock
