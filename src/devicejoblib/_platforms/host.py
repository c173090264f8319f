"""The host CPU, and the native thread limits of everything that computes on it."""

from __future__ import annotations

import contextlib
import os
import threading

from .._safe_import import cpu_count
from .base import Platform


class HostThreadLimits:
    """threadpoolctl limits held while host threads of this process compute at once.

    BLAS pools are process-wide: the first holder sets the limit and the last one
    restores the original; OpenMP limits are per thread, so every holder sets them in its
    own thread too. (loky workers are processes: joblib limits those itself.)
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._holders = 0
        self._original = None

    @contextlib.contextmanager
    def hold(self, n_threads):
        """Limit native pools to their share of the cores while ``n_threads`` compute."""
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=max((cpu_count() or 1) // max(n_threads, 1), 1))
        with self._lock:
            if self._holders == 0:
                self._original = limiter
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    self._original.restore_original_limits()
                    self._original = None


HOST_THREADS = HostThreadLimits()
NUMBA_SIMULATOR_LOCK = threading.Lock()


class HostPlatform(Platform):
    """The CPU of this machine: one device, ``"cpu"``, running kernels' CPU
    implementations in loky worker processes or threads."""

    name = "host"
    kind = "cpu"
    spellings = ("cpu",)
    runs = "cpu"
    is_gpu = False

    def probe(self, **settings):
        page = _sysconf("SC_PAGE_SIZE")
        return [{"name": _cpu_model(), "cores": cpu_count(),
                 "memory_total": _sysconf("SC_PHYS_PAGES") * page or None,
                 "memory_free": _sysconf("SC_AVPHYS_PAGES") * page or None}], {}

    def thread_limits(self, n_threads):
        return HOST_THREADS.hold(n_threads)

    def runs_numba_cuda(self):
        return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

    def numba_launch_lock(self):
        # Numba's CUDA simulator has one device and cannot run two kernels at once
        return NUMBA_SIMULATOR_LOCK


def _sysconf(name):
    try:
        return os.sysconf(name)
    except (AttributeError, ValueError, OSError):
        return 0


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "CPU"
