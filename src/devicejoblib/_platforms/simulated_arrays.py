"""The simulator's stand-in for a CuPy array kept on a GPU (imports NumPy: loaded on
first use, never at package import)."""

from __future__ import annotations

import numpy as np

from ..arrays import array_types_changed

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
        if not kept_any:
            kept_any = True
            array_types_changed()
        out = array.view(cls)
        out.device_id = device_id
        return out

    def get(self):
        """A plain NumPy copy, as ``cupy.ndarray.get()`` gives."""
        return np.array(self)
