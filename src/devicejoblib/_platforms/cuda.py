"""CUDA GPUs: one device kind, whatever array libraries see them. The GPUs are listed
through the first installed library that can (CuPy, else Numba), the device's
``provider`` and the default library of implementations that name none; a worker
thread binds every library of the process to its device."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

from ..arrays import array_libraries, get_array_library
from .base import Platform, thread_timer, wall_timer

_DRIVER_LIBRARIES = {"linux": "libcuda.so.1", "win32": "nvcuda.dll"}
_OOM_CODES = ("CUDA_ERROR_OUT_OF_MEMORY", "cudaErrorMemoryAllocation")
# errors after which the CUDA context is unusable: every later call fails too
_STICKY_CODES = ("ILLEGAL_ADDRESS", "IllegalAddress", "LAUNCH_FAILED", "LaunchFailure",
                 "ECC_UNCORRECTABLE", "ECCUncorrectable", "HARDWARE_STACK_ERROR",
                 "HardwareStackError", "ILLEGAL_INSTRUCTION", "IllegalInstruction",
                 "MISALIGNED_ADDRESS", "MisalignedAddress", "INVALID_PC", "InvalidPc")


class CUDAPlatform(Platform):
    """CUDA GPUs: the driver check, ``CUDA_VISIBLE_DEVICES``, sticky and out-of-memory
    errors, the worker thread's cost timer; arrays through the array libraries that
    serve ``runs`` implementations (CuPy, Numba...)."""

    name = "cuda"
    kind = "cuda"
    spellings = ("cuda", "gpu")
    runs = "cuda"

    # --- discovery -----------------------------------------------------------------

    def probers(self):
        return tuple(lib for lib in array_libraries(self.runs) if lib.lists_devices)

    def installed(self):
        return any(prober.installed() for prober in self.probers())

    def probe(self, **settings):
        for prober in self.probers():
            if prober.installed() and prober.unavailable_reason() is None:
                found, versions = prober.probe()
                if found:
                    return [{**props, "provider": prober.name} for props in found], versions
        return [], {}

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

    # --- array libraries -----------------------------------------------------------

    def library_for(self, device=None, name=None):
        """The library ``name``; else the one the device was found through; else the
        first installed one that lists devices (CuPy before Numba)."""
        if name is not None:
            return get_array_library(name)
        provider = getattr(device, "provider", None)
        if provider is not None and provider != self.name:
            return get_array_library(provider)
        return next((lib for lib in self.probers() if lib.installed()), self.probers()[0])

    def _bound_libraries(self, device):
        """The libraries a worker thread binds: those already imported (a kernel may use
        them), then the device's own, which makes the thread's stream."""
        own = self.library_for(device)
        return [lib for lib in array_libraries(self.runs)
                if lib is not own and lib.loaded() and lib.lists_devices] + [own]

    def bind(self, device):
        *others, own = self._bound_libraries(device)
        stream = None
        for library in others:
            # best effort: a library that lists no GPU here (a CuPy built for another
            # CUDA) must not cost the device; its own library is what counts
            with contextlib.suppress(Exception):
                _, stream = library.bind(device, stream)
        sync, _ = own.bind(device, stream)
        return sync

    def bound(self, device):
        return self.library_for(device).bound(device)

    # --- errors and memory -----------------------------------------------------------

    def is_device_lost(self, error):
        text = f"{type(error).__name__}: {error}"
        return ("CUDA" in text or "cuda" in text) and any(c in text for c in _STICKY_CODES)

    def is_out_of_memory(self, error):
        # CuPy's OutOfMemoryError is a MemoryError; Numba's CudaAPIError and CuPy's
        # runtime errors carry the CUDA error's name
        return (isinstance(error, MemoryError)
                or any(lib.is_out_of_memory(error) for lib in array_libraries(self.runs))
                or any(code in str(error) for code in _OOM_CODES))

    def free_cached_memory(self):
        for library in array_libraries(self.runs):
            if library.loaded():
                with contextlib.suppress(Exception):  # (the retry tells if it helped)
                    library.free_cached_memory()

    # --- timing and Numba CUDA kernels ---------------------------------------------------

    def start_cost_timer(self, device):
        """The thread's CPU time. A worker thread waiting for the GIL uses none, and
        waits up to the 5 ms switch interval at each CuPy call while CPU workers'
        results keep the process busy (on an H200, calls of 0.1 ms measured 1-3 ms by
        the wall clock). A wait for the GPU counts: CUDA's default synchronisation
        spins while the process has no more CUDA contexts than CPU cores, and yields
        (running between yields) otherwise. On Windows the wall clock: a thread's CPU
        time there advances by clock ticks of about 15.6 ms."""
        return wall_timer() if sys.platform == "win32" else thread_timer()

    def runs_numba_cuda(self):
        return True

    def launch_numba(self, kernel, blocks, threads, *args, device=None):
        cupy = sys.modules.get("cupy")
        if cupy is None or self.library_for(device).name != "cupy":
            kernel[blocks, threads](*args)
            return
        # on the worker's CuPy stream, ordered after the copies that brought the inputs
        from numba import cuda

        stream = cuda.external_stream(cupy.cuda.get_current_stream().ptr)
        kernel[blocks, threads, stream](*args)
