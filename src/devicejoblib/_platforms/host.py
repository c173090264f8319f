"""The host CPU, and the native thread limits of everything that computes on it."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading

from .._safe_import import cpu_count
from .base import Platform


class HostThreadLimits:
    """threadpoolctl limits held while host threads of this process compute at once
    (held by the backend for each ``Parallel`` call, by a CPU thread pool while it lives).

    BLAS pools are process-wide: the first holder sets the limit and the last one
    restores the original; a later holder's share replaces an earlier one's while both
    hold. OpenMP limits apply to the thread that sets them: :meth:`limit_this_thread`
    sets them in a worker thread. (loky workers are processes: joblib limits those.)
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._holders = 0
        self._original = None
        self._controller = (None, None)  # (modules loaded when made, ThreadpoolController)

    @contextlib.contextmanager
    def hold(self, n_threads):
        """Limit native pools to their share of the cores while ``n_threads`` compute."""
        with self._lock:
            # (PyTorch's first: threadpoolctl's OpenMP limit would set what it reads)
            torch_threads = limit_torch_threads(_share(n_threads))
            limiter = self._controller_now().limit(limits=_share(n_threads))
            if self._holders == 0:
                self._original = limiter, torch_threads
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    limiter, torch_threads = self._original
                    limiter.restore_original_limits()
                    # (imported while held: PyTorch's default is a thread per core)
                    limit_torch_threads(torch_threads or _cores())
                    self._original = None

    def limit_this_thread(self, n_threads):
        """Limit the calling thread's OpenMP pool to its share (a worker thread's start)."""
        with self._lock:
            controller = self._controller_now()
        controller.select(user_api="openmp").limit(limits=_share(n_threads))

    def _controller_now(self):
        # Making a controller scans the loaded libraries (~0.3-1 ms): reuse it while no
        # module was imported since, which is when a new native library could appear.
        from threadpoolctl import ThreadpoolController

        modules, controller = self._controller
        if controller is None or modules != len(sys.modules):
            controller = ThreadpoolController()
            self._controller = (len(sys.modules), controller)
        return controller


def limit_torch_threads(n_threads, interop=False):
    """Set PyTorch's intra-op pool of this process to ``n_threads`` (threadpoolctl does
    not see it) — and its inter-op pool, with ``interop``, where it has not started yet
    (PyTorch allows that once); the intra-op size before, or None without PyTorch."""
    torch = sys.modules.get("torch")
    if torch is None or getattr(getattr(torch, "__spec__", None), "_initializing", False):
        return None  # (not imported, or being imported by another thread)
    before = torch.get_num_threads()
    if before != n_threads:
        torch.set_num_threads(n_threads)
    if interop and torch.get_num_interop_threads() != n_threads:
        with contextlib.suppress(RuntimeError):  # started already: it stays as it is
            torch.set_num_interop_threads(n_threads)
    return before


def _share(n_threads):
    return max(_cores() // max(n_threads, 1), 1)


@functools.cache
def _cores():
    """The CPUs this process may use, read once (joblib reads cgroup files: a fifth of
    a millisecond, which every ``Parallel`` call with simulated GPUs paid)."""
    return cpu_count() or 1


HOST_THREADS = HostThreadLimits()
NUMBA_SIMULATOR_LOCK = threading.Lock()


class HostComputePlatform(Platform):
    """A platform whose devices compute on the host CPU: threads of this process share
    its cores (threadpoolctl limits), and Numba CUDA kernels can only run under Numba's
    CUDA simulator, one launch at a time."""

    def thread_limits(self, n_threads):
        return HOST_THREADS.hold(n_threads)

    @staticmethod
    def cores():
        """The CPUs this process may use."""
        return _cores()

    def limit_thread(self, n_threads):
        HOST_THREADS.limit_this_thread(n_threads)

    def runs_numba_cuda(self):
        return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

    def numba_launch_lock(self):
        # Numba's CUDA simulator has one device and cannot run two kernels at once
        return NUMBA_SIMULATOR_LOCK


class HostPlatform(HostComputePlatform):
    """The CPU of this machine: one device, ``"cpu"``, running kernels' CPU
    implementations in loky worker processes or threads."""

    name = "host"
    kind = "cpu"
    spellings = ("cpu",)
    runs = "cpu"
    is_gpu = False
    indexed = False

    def probe(self, **settings):
        page = _sysconf("SC_PAGE_SIZE")
        return [{"name": _cpu_model(), "cores": cpu_count(),
                 "memory_total": _sysconf("SC_PHYS_PAGES") * page or None,
                 "memory_free": _sysconf("SC_AVPHYS_PAGES") * page or None}], {}


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
