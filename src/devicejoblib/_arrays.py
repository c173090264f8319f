"""Moving call arguments to a GPU and results back, for real and simulated GPUs."""

from __future__ import annotations

import sys

import numpy as np

_kept_simulated = False


class SimulatedDeviceArray(np.ndarray):
    """A NumPy array that a simulated GPU kept "on device" (``keep_on_device=True``).

    It stands for a CuPy array on a real GPU: passing it to a later call sends that call
    to the same simulated GPU (data affinity). ``.device_id`` names the device.
    """

    device_id = None

    def __array_finalize__(self, obj):
        self.device_id = getattr(obj, "device_id", None)

    def get(self):
        """A plain NumPy copy, as ``cupy.ndarray.get()`` gives."""
        return np.array(self)


def device_array_types():
    """The array types that may live on a GPU in this process: CuPy's once CuPy is
    imported, simulated ones once one was kept on a simulated GPU (none otherwise, so
    that routing skips looking at arguments)."""
    types = (SimulatedDeviceArray,) if _kept_simulated else ()
    cupy = sys.modules.get("cupy")
    return types if cupy is None else (*types, cupy.ndarray)


def holds_any(types, args, kwargs):
    """Whether a call's arguments include an instance of ``types``."""
    for value in args:
        if isinstance(value, types):
            return True
    return bool(kwargs) and any(isinstance(v, types) for v in kwargs.values())


def device_id_of(value):
    """``"cuda:k"`` when ``value`` is an array living on GPU k, else None."""
    if isinstance(value, SimulatedDeviceArray):
        return value.device_id
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(value, cupy.ndarray):
        return f"cuda:{value.device.id}"
    return None


def to_device(args, kwargs, device):
    """Arguments for a call on a real GPU: NumPy arrays become CuPy arrays there."""
    import cupy

    def move(value):
        return cupy.asarray(value) if isinstance(value, np.ndarray) else value

    return tuple(map(move, args)), {k: move(v) for k, v in kwargs.items()}


def to_host(result, device, keep_on_device):
    """A call's result as the caller receives it: NumPy, unless kept on the device."""
    if not device.is_gpu:
        return result
    if isinstance(result, tuple):
        return tuple(to_host(r, device, keep_on_device) for r in result)
    if isinstance(result, list):
        return [to_host(r, device, keep_on_device) for r in result]
    if device.simulated:
        if not isinstance(result, np.ndarray):
            return result
        if not keep_on_device:
            return result.view(np.ndarray)
        global _kept_simulated
        _kept_simulated = True
        kept = result.view(SimulatedDeviceArray)
        kept.device_id = device.id
        return kept
    cupy = sys.modules.get("cupy")
    if not keep_on_device and cupy is not None and isinstance(result, cupy.ndarray):
        return result.get()
    return result
