"""What runs on a Dask worker for the device backend (imports ``distributed``: loaded
only where a backend was given a client, and on its workers).

A GPU part runs on the worker's own GPUs as calls run locally: a runner per backend and
worker process (a :class:`~devicejoblib.DeviceBackend` over the worker's GPUs, made on
its first part, with one thread per GPU, launch sizes, fusion and resident state), which
:class:`RunnerPlugin` lets go of when the backend ends.
"""

from __future__ import annotations

import threading
import time

from distributed import WorkerPlugin, get_worker

from ._errors import GPUWorkerLostError
from ._execution import FusedCPUBatch
from ._fusion import add_note, describe, has_batched_form
from ._joblib_adapters import applied_config, nested_config
from ._platforms import HOST

_runners = {}  # plugin name -> the DeviceBackend running that backend's GPU parts here
_runners_lock = threading.Lock()


class RunnerPlugin(WorkerPlugin):
    """Stops a backend's runner on each worker when the backend ends (unregistered)."""

    def __init__(self, name):
        self.name = name

    def teardown(self, worker):
        with _runners_lock:
            runner = _runners.pop(self.name, None)
        if runner is not None:
            runner.shutdown(wait=False)  # a running call ends on its own thread


def _runner(name):
    with _runners_lock:
        runner = _runners.get(name)
        if runner is None:
            from ._backend import DeviceBackend

            runner = DeviceBackend(placement="gpu")
            runner.configure(n_jobs=-1)
            _runners[name] = runner
    return runner


def gpu_part(name, batch):
    """Run a GPU part on this worker's least loaded GPU: ``(results, (worker address,
    device id), seconds)``."""
    address, start, runner = get_worker().address, time.perf_counter(), None
    try:
        runner = _runner(name)
        results, device_id = runner.run_on_a_gpu(batch)
    except BaseException as exc:
        if runner is not None and len(runner.router.lost) == len(runner.workers):
            # no GPU left here
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
    with applied_config(nested_config(batch)):
        for function, args, kwargs in batch.items:
            try:
                results.append(function(*args, **kwargs))
            except Exception as exc:
                add_note(exc, f"raised by {describe(function, args, kwargs)} on the CPU")
                raise
    return results
