"""CuPy: arrays on CUDA GPUs, a non-blocking stream per worker thread, a memory pool."""

from __future__ import annotations

import contextlib
import sys

from .base import ArrayLibrary


class CuPyLibrary(ArrayLibrary):
    """CuPy arrays on CUDA devices (the default library of GPU implementations): each
    worker thread uses its device and a non-blocking stream of its own; NumPy arguments
    become CuPy arrays, results come back as NumPy."""

    name = package = "cupy"
    serves = ("cuda",)
    lists_devices = True
    warn_when_unusable = True

    def probe(self):
        import cupy

        runtime = cupy.cuda.runtime
        found = []
        for index in range(runtime.getDeviceCount()):
            props = runtime.getDeviceProperties(index)
            # memGetInfo needs a context; creating it here is safe because loky starts
            # its workers with fork+exec, never a plain fork of this process.
            with cupy.cuda.Device(index):
                free, total = runtime.memGetInfo()
            found.append({"index": index, "name": _text(props["name"]),
                          "memory_total": total, "memory_free": free,
                          "multiprocessor_count": props["multiProcessorCount"],
                          "compute_capability": (props["major"], props["minor"])})
        versions = {"provider": f"cupy {cupy.__version__}"}
        if not getattr(runtime, "is_hip", False):  # ROCm encodes its versions otherwise
            local = getattr(cupy.cuda, "get_local_runtime_version", runtime.runtimeGetVersion)
            versions.update(driver=_cuda_version(runtime.driverGetVersion()),
                            runtime=_cuda_version(local()))
        return found, versions

    def bind(self, device, stream=None):
        import cupy

        cupy.cuda.Device(device.index).use()
        if stream is None:
            stream = cupy.cuda.Stream(non_blocking=True)
        elif not isinstance(stream, cupy.cuda.Stream):  # another library's (torch's)
            stream = cupy.cuda.ExternalStream(stream.cuda_stream, device.index)
        stream.use()
        return stream.synchronize, stream

    @contextlib.contextmanager
    def bound(self, device):
        import cupy

        with cupy.cuda.Device(device.index):
            stream = cupy.cuda.Stream(non_blocking=True)
            with stream:
                yield stream.synchronize

    def synchronize(self):
        import cupy

        cupy.cuda.get_current_stream().synchronize()

    def array_types(self):
        cupy = sys.modules.get("cupy")  # no CuPy array can exist before CuPy is imported
        return () if cupy is None else (cupy.ndarray,)

    def home_of(self, value):
        return f"cuda:{value.device.id}"

    def to_device(self, value):
        import numpy as np

        if isinstance(value, np.ndarray):
            import cupy

            return cupy.asarray(value)
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(value, torch.Tensor) and value.is_cuda:
            import cupy

            return cupy.from_dlpack(value)  # a view of the tensor, no copy
        return value

    def to_host(self, value, keep_on_device=False):
        return value if keep_on_device else value.get()

    def is_out_of_memory(self, error):
        return type(error).__name__ == "OutOfMemoryError"

    def free_cached_memory(self):
        cupy = sys.modules.get("cupy")
        if cupy is not None:
            cupy.get_default_memory_pool().free_all_blocks()


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(code):
    return f"{code // 1000}.{code % 1000 // 10}"
