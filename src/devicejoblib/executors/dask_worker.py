"""What runs on a Dask worker for the device backend (imports ``distributed``: loaded
only where a backend was given a client, and on its workers).

A GPU part runs on the worker's own GPUs as calls run locally: :class:`GPUPoolPlugin`,
registered by the backend under a name of its own, owns a GPU pool (one thread per GPU,
launch sizes, fusion and resident state), made by the backend's ``make_pool`` on the
worker's first GPU part and let go of at ``teardown()``. No joblib backend is built on
a worker.
"""

from __future__ import annotations

import threading
import time

from distributed import WorkerPlugin, get_worker

from .._errors import GPUWorkerLostError
from .._joblib_adapters import applied_config
from .._platforms import HOST
from ..run.fusion import add_note, describe, has_batched_form
from ..run.tasks import FusedCPUBatch


class GPUPoolPlugin(WorkerPlugin):
    """Owns a backend's GPU pool on one worker.

    Parameters
    ----------
    name : str
        The backend's plugin name (unregistering it tears the pool down).
    make_pool : callable
        ``make_pool()``: a pool over this worker's GPUs, with ``run(batch)``,
        ``lost``, ``workers`` and ``shutdown(wait)`` (pickled by reference).
    """

    def __init__(self, name, make_pool):
        self.name = name
        self.make_pool = make_pool
        self._pool = None
        self._lock = threading.Lock()

    @property
    def pool(self):
        """The pool, made on first use (CPU workers never make one)."""
        with self._lock:
            if self._pool is None:
                self._pool = self.make_pool()
            return self._pool

    def teardown(self, worker):
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)  # a running call ends on its own thread

    def __getstate__(self):  # (sent to the workers before any pool exists)
        return {"name": self.name, "make_pool": self.make_pool}

    def __setstate__(self, state):
        self.__init__(state["name"], state["make_pool"])


def gpu_part(name, batch):
    """Run a GPU part on this worker's least loaded GPU: ``(results, (worker address,
    device id), seconds)``."""
    worker = get_worker()
    address, start, pool = worker.address, time.perf_counter(), None
    try:
        plugin = worker.plugins.get(name)
        if plugin is None:  # the backend ended (or its plugin has not reached here)
            raise RuntimeError(f"the device backend's plugin {name!r} is not registered "
                               f"on Dask worker {address}")
        pool = plugin.pool
        results, device_id = pool.run(batch)
    except BaseException as exc:
        if pool and len(pool.lost) == len(pool.workers):  # it had GPUs: none left
            raise GPUWorkerLostError(f"every GPU of Dask worker {address} is lost: "
                                     f"{type(exc).__name__}: {exc}", address) from None
        add_note(exc, f"on Dask worker {address}")
        raise
    return results, (address, device_id), time.perf_counter() - start


def cpu_part(batch):
    """Run a CPU part in this worker's thread (fused where kernels have a batched form):
    ``(results, (worker address, "cpu"), seconds)``."""
    address, start = get_worker().address, time.perf_counter()
    try:
        if has_batched_form(batch.items, HOST.runs):
            results = FusedCPUBatch(batch)()  # (its errors name their call)
        else:
            results = _one_by_one(batch)
    except BaseException as exc:
        add_note(exc, f"on Dask worker {address}")
        raise
    return results, (address, "cpu"), time.perf_counter() - start


def _one_by_one(batch):
    """The calls of ``batch`` in order, under its nested joblib configuration, as
    ``BatchedCalls`` runs them, an error naming its call."""
    results = []
    with applied_config(batch):
        for function, args, kwargs in batch.items:
            try:
                results.append(function(*args, **kwargs))
            except Exception as exc:
                add_note(exc, f"raised by {describe(function, args, kwargs)} on the CPU")
                raise
    return results
