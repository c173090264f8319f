"""Results on their way back from a device, and the simulator's stand-in for a CuPy
array kept on a GPU."""

from __future__ import annotations

import numpy as np

kept_any = False  # whether a simulated GPU kept an array: routing then looks for them


class SimulatedDeviceArray(np.ndarray):
    """A NumPy array that a simulated GPU kept "on device" (``keep_on_device=True``).

    It stands for a CuPy array on a real GPU: passing it to a later call sends that call
    to the same simulated GPU (data affinity). ``.device_id`` names the device.
    """

    device_id = None

    def __array_finalize__(self, obj):
        self.device_id = getattr(obj, "device_id", None)

    @classmethod
    def kept(cls, array, device_id):
        """``array`` kept on the simulated GPU ``device_id``."""
        global kept_any
        kept_any = True
        out = array.view(cls)
        out.device_id = device_id
        return out

    def get(self):
        """A plain NumPy copy, as ``cupy.ndarray.get()`` gives."""
        return np.array(self)


def holds_any(types, args, kwargs):
    """Whether a call's arguments include an instance of ``types``."""
    for value in args:
        if isinstance(value, types):
            return True
    return bool(kwargs) and any(isinstance(v, types) for v in kwargs.values())


def to_host(result, device, keep_on_device=False):
    """A call's result as the caller receives it: its arrays (also inside tuples and
    lists) moved to the host by the device's platform, unless kept on the device."""
    if isinstance(result, tuple):
        return tuple(to_host(r, device, keep_on_device) for r in result)
    if isinstance(result, list):
        return [to_host(r, device, keep_on_device) for r in result]
    return device.platform.to_host(result, device, keep_on_device)
