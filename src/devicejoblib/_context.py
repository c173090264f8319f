"""Where the current thread runs calls: the CPU, or the GPU its worker thread is bound to."""

from __future__ import annotations

import threading

_local = threading.local()


def bind_thread(device):
    """Bind the calling thread (a GPU worker) to ``device`` for every call it runs (None:
    unbind); returns the device it was bound to."""
    previous, _local.device = getattr(_local, "device", None), device
    return previous


def bound_device():
    """The device the calling thread is bound to, or None on a thread of CPU calls."""
    return getattr(_local, "device", None)


def current_device():
    """The device the calling code runs on.

    Returns
    -------
    Device
        Inside a call that devicejoblib runs on a GPU (real or simulated), that GPU;
        everywhere else the CPU device.
    """
    device = bound_device()
    if device is not None:
        return device
    from ._devices import cpu_device

    return cpu_device()


def array_module():
    """The array module of the device the calling code runs on.

    Returns
    -------
    module
        The module of the device's default array library: CuPy on a GPU seen through
        CuPy; NumPy on the CPU, on simulated GPUs and on GPUs seen through Numba
        alone. Write a kernel once against ``xp = array_module()`` and it runs on
        either.
    """
    device = current_device()
    return device.platform.array_module(device)


def numba_cuda_lock():
    """The lock to hold around a Numba CUDA launch that may run under the simulator.

    Returns
    -------
    context manager
        Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) has one device and cannot
        run two kernels at once: on the CPU and on simulated GPUs this is one
        process-wide lock; on a real GPU it does nothing.
    """
    return current_device().platform.numba_launch_lock()
