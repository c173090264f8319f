"""CUDA GPUs, through CuPy (arrays, streams, memory pool) or through Numba alone."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

from .base import Platform, thread_timer, wall_timer

_DRIVER_LIBRARIES = {"linux": "libcuda.so.1", "win32": "nvcuda.dll"}
_OOM_CODES = ("CUDA_ERROR_OUT_OF_MEMORY", "cudaErrorMemoryAllocation")
# errors after which the CUDA context is unusable: every later call fails too
_STICKY_CODES = ("ILLEGAL_ADDRESS", "IllegalAddress", "LAUNCH_FAILED", "LaunchFailure",
                 "ECC_UNCORRECTABLE", "ECCUncorrectable", "HARDWARE_STACK_ERROR",
                 "HardwareStackError", "ILLEGAL_INSTRUCTION", "IllegalInstruction",
                 "MISALIGNED_ADDRESS", "MisalignedAddress", "INVALID_PC", "InvalidPc")


class CUDAPlatform(Platform):
    """What CUDA platforms share: the driver check, ``CUDA_VISIBLE_DEVICES``, and the
    out-of-memory errors of the CUDA runtime and driver."""

    kind = "cuda"
    spellings = ("cuda", "gpu")
    runs = "cuda"

    def hidden_by_user(self):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible.strip() in ("", "-1"):
            return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
        return None

    def unavailable_reason(self):
        library = next((lib for plat, lib in _DRIVER_LIBRARIES.items()
                        if sys.platform.startswith(plat)), None)
        if library is None:
            return f"installed but no CUDA driver: CUDA has no driver on {sys.platform}"
        try:
            ctypes.CDLL(library)
        except OSError as exc:
            return f"installed but no CUDA driver: {library} could not be loaded ({exc})"
        return None

    def is_device_lost(self, error):
        text = f"{type(error).__name__}: {error}"
        return ("CUDA" in text or "cuda" in text) and any(c in text for c in _STICKY_CODES)

    def is_out_of_memory(self, error):
        # CuPy's OutOfMemoryError is a MemoryError; Numba's CudaAPIError and CuPy's
        # runtime errors carry the CUDA error's name
        return (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
                or any(code in str(error) for code in _OOM_CODES))

    def runs_numba_cuda(self):
        return True

    def start_cost_timer(self, device):
        """The thread's CPU time. A worker thread waiting for the GIL uses none, and
        waits up to the 5 ms switch interval at each CuPy call while CPU workers'
        results keep the process busy (on an H200, calls of 0.1 ms measured 1-3 ms by
        the wall clock). A wait for the GPU counts: CUDA's default synchronisation
        spins while the process has no more CUDA contexts than CPU cores, and yields
        (running between yields) otherwise. On Windows the wall clock: a thread's CPU
        time there advances by clock ticks of about 15.6 ms."""
        return wall_timer() if sys.platform == "win32" else thread_timer()


class CuPyPlatform(CUDAPlatform):
    """CUDA GPUs seen through CuPy: each worker thread uses its device and a non-blocking
    stream of its own; arguments become CuPy arrays, results come back as NumPy."""

    name = package = "cupy"
    warn_when_unusable = True

    def probe(self, **settings):
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

    def bind(self, device):
        if "numba.cuda" in sys.modules:
            # the program uses Numba CUDA too: give this thread its context on the device
            from numba import cuda

            cuda.select_device(device.index)
        import cupy

        cupy.cuda.Device(device.index).use()
        stream = cupy.cuda.Stream(non_blocking=True)
        stream.use()
        return stream.synchronize

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

    def array_module(self):
        import cupy

        return cupy

    def to_device(self, args, kwargs):
        import cupy
        import numpy as np

        def move(value):
            return cupy.asarray(value) if isinstance(value, np.ndarray) else value

        return tuple(map(move, args)), {k: move(v) for k, v in kwargs.items()}

    def to_host(self, result, device, keep_on_device=False):
        cupy = sys.modules.get("cupy")
        if not keep_on_device and cupy is not None and isinstance(result, cupy.ndarray):
            return result.get()
        return result

    def array_types(self):
        cupy = sys.modules.get("cupy")  # no CuPy array can exist before CuPy is imported
        return () if cupy is None else (cupy.ndarray,)

    def home_of(self, value):
        return f"{self.kind}:{value.device.id}"

    def free_cached_memory(self):
        cupy = sys.modules.get("cupy")
        if cupy is not None:
            cupy.get_default_memory_pool().free_all_blocks()

    def launch_numba(self, kernel, blocks, threads, *args):
        # on the worker's CuPy stream, ordered after the copies that brought the inputs
        import cupy
        from numba import cuda

        stream = cuda.external_stream(cupy.cuda.get_current_stream().ptr)
        kernel[blocks, threads, stream](*args)


class NumbaPlatform(CUDAPlatform):
    """CUDA GPUs seen through Numba alone (no CuPy): GPU implementations receive host
    arrays (Numba kernels copy them), device arrays come back to the host."""

    name = package = "numba"

    def unavailable_reason(self):
        config = getattr(sys.modules.get("numba"), "config", None)
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or getattr(config, "ENABLE_CUDASIM", 0):
            return ("is not probed: NUMBA_ENABLE_CUDASIM=1 makes numba.cuda a simulator, not "
                    "a GPU (use DEVICEJOBLIB_SIMULATE_GPUS for simulated GPUs)")
        return super().unavailable_reason()

    def probe(self, **settings):
        from numba import cuda

        found = []
        for gpu in cuda.gpus:
            with gpu:
                free, total = cuda.current_context().get_memory_info()
            found.append({"index": gpu.id, "name": _text(gpu.name), "memory_total": total,
                          "memory_free": free, "multiprocessor_count": gpu.MULTIPROCESSOR_COUNT,
                          "compute_capability": tuple(gpu.compute_capability)})
        driver = cuda.cudadrv.driver.driver.get_version()
        return found, {"provider": "numba", "driver": ".".join(map(str, driver))}

    def bind(self, device):
        from numba import cuda

        cuda.select_device(device.index)
        return cuda.synchronize

    @contextlib.contextmanager
    def bound(self, device):
        from numba import cuda

        with cuda.gpus[device.index]:
            yield cuda.synchronize

    def synchronize(self):
        from numba import cuda

        cuda.synchronize()

    def to_host(self, result, device, keep_on_device=False):
        if not keep_on_device and type(result).__name__ == "DeviceNDArray":
            return result.copy_to_host()
        return result

    def empty_like(self, array):
        from numba import cuda

        return cuda.device_array_like(array)

    def free_cached_memory(self):
        from numba import cuda

        cuda.current_context().deallocations.clear()


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(code):
    return f"{code // 1000}.{code % 1000 // 10}"
