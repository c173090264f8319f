"""Numba: CUDA GPUs listed and bound through Numba alone, and its device arrays."""

from __future__ import annotations

import contextlib
import os
import sys

from .base import ArrayLibrary


class NumbaLibrary(ArrayLibrary):
    """Numba's CUDA device arrays. A GPU implementation written for Numba receives host
    arrays (Numba kernels copy them, or the implementation calls ``cuda.to_device``);
    device arrays it returns come back to the host unless kept. Numba lists CUDA GPUs
    where CuPy is missing; Numba is a CPU JIT as often as a CUDA one, so finding no
    GPU through it is no warning."""

    name = "numba"
    package = "numba"
    serves = ("cuda",)
    lists_devices = True

    def loaded(self):
        return sys.modules.get("numba.cuda") is not None

    def unavailable_reason(self):
        config = getattr(sys.modules.get("numba"), "config", None)
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or getattr(config, "ENABLE_CUDASIM", 0):
            return ("is not probed: NUMBA_ENABLE_CUDASIM=1 makes numba.cuda a simulator, not "
                    "a GPU (use DEVICEJOBLIB_SIMULATE_GPUS for simulated GPUs)")
        return None

    def probe(self):
        from numba import cuda

        found = []
        for gpu in cuda.gpus:
            with gpu:
                free, total = cuda.current_context().get_memory_info()
            name = gpu.name.decode() if isinstance(gpu.name, bytes) else str(gpu.name)
            found.append({"index": gpu.id, "name": name, "memory_total": total,
                          "memory_free": free, "multiprocessor_count": gpu.MULTIPROCESSOR_COUNT,
                          "compute_capability": tuple(gpu.compute_capability)})
        driver = cuda.cudadrv.driver.driver.get_version()
        return found, {"provider": "numba", "driver": ".".join(map(str, driver))}

    def module(self):
        import numpy

        return numpy  # Numba kernels take NumPy arrays; there is no Numba array module

    def bind(self, device, stream=None):
        from numba import cuda

        cuda.select_device(device.index)
        return cuda.synchronize, stream

    @contextlib.contextmanager
    def bound(self, device):
        from numba import cuda

        with cuda.gpus[device.index]:
            yield cuda.synchronize

    def synchronize(self):
        from numba import cuda

        cuda.synchronize()

    def array_types(self):
        # (under Numba's CUDA simulator this module has no DeviceNDArray)
        array = getattr(sys.modules.get("numba.cuda.cudadrv.devicearray"), "DeviceNDArray", None)
        return () if array is None else (array,)

    def home_of(self, value):
        # a device array's memory belongs to its context's device (None: a simulator's)
        context = getattr(getattr(value, "gpu_data", None), "context", None)
        device = getattr(context, "device", None)
        return None if device is None else f"cuda:{device.id}"

    def to_host(self, value, keep_on_device=False):
        return value if keep_on_device else value.copy_to_host()

    def empty_like(self, array):
        from numba import cuda

        return cuda.device_array_like(array)

    def free_cached_memory(self):
        from numba import cuda

        cuda.current_context().deallocations.clear()
