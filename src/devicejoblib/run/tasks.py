"""How the parts of a joblib batch run once routed: on a GPU worker (calls of several
batches together, fused where kernels allow), fused in a CPU worker, and joined back
into one result per joblib batch."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

from .._devices import cpu_device
from .._joblib_adapters import applied_config, nested_config_key
from .fusion import Failure, Lost, Ran, has_batched_form, run_calls, run_one_by_one


class GPUTask:
    """The part of a joblib batch that one GPU runs. Fusable tasks (some kernel has a
    batched form for the GPU) with the same ``config`` (joblib's nested backend) may
    run together (an unfusable task runs alone: its ``config`` is None)."""

    __slots__ = ("batch", "config", "fusable", "items", "n_calls")

    def __init__(self, batch, device):
        self.batch = batch
        self.items = batch.items
        self.n_calls = len(self.items)
        self.fusable = has_batched_form(self.items, device.platform.runs)
        self.config = nested_config_key(batch) if self.fusable else None


def execute_gpu(device, keep_on_device, sizer, tasks, should_stop=None, cpu_fallback=None):
    """Run tasks on the calling GPU worker: their calls together, fused where kernels
    allow (at most the sizer's batch size per launch). A :class:`Ran` with one result
    list (or the first call's :class:`Failure`) per task."""
    calls = tasks[0].items if len(tasks) == 1 else [c for task in tasks for c in task.items]
    with applied_config(tasks[0].batch):
        if tasks[0].fusable:  # (a group is fusable tasks, or one unfusable task)
            sizer.expect(calls)
            ran = run_calls(calls, device, keep_on_device, sizer.size,
                            on_out_of_memory=sizer.out_of_memory, should_stop=should_stop,
                            cpu_fallback=cpu_fallback)
        else:  # no launch to size
            ran = Ran(run_one_by_one(calls, device, keep_on_device, should_stop,
                                     cpu_fallback))
    lost = device.platform.is_device_lost
    per_task, start = [], 0
    for task in tasks:
        per_task.append(_first_failure(ran.results[start:start + task.n_calls], lost))
        start += task.n_calls
    ran.results = per_task
    return ran


def _first_failure(results, lost):
    """``results``, or the :class:`Failure` of the first call that failed (a
    :class:`Lost` with the results before it when the device was lost)."""
    for position, result in enumerate(results):
        if type(result) is Failure:
            return Lost(result.error, results[:position]) if lost(result.error) else result
    return results


class FusedCPUBatch:
    """A joblib batch run by a CPU worker with its kernels' batched forms."""

    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return len(self.batch)

    def __call__(self):
        with applied_config(self.batch):
            results = run_calls(self.batch.items, cpu_device()).results
        for result in results:
            if type(result) is Failure:
                raise result.error
        return results


class TorchThreadsBatch:
    """A batch run with PyTorch's pools at its worker's share of the cores: joblib
    limits OpenMP and BLAS in worker processes, threadpoolctl in threads, and neither
    PyTorch's own pools (inter-op too, in a process: once, before it starts)."""

    def __init__(self, batch, n_threads, interop=True):
        self.batch, self.n_threads, self.interop = batch, n_threads, interop

    def __len__(self):
        return len(self.batch)

    def __call__(self):
        from .._platforms.host import limit_torch_threads

        limit_torch_threads(self.n_threads, interop=self.interop)
        try:
            return self.batch()
        finally:  # (a batch that imported torch itself)
            limit_torch_threads(self.n_threads, interop=self.interop)


class TimedBatch:
    """A CPU batch that also says how long it ran in its worker: ``(results, seconds)``
    (what the cost model learns from, without the queueing before it)."""

    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return len(self.batch)

    def __call__(self):
        start = time.perf_counter()
        results = self.batch()
        return results, time.perf_counter() - start


class JoinedBatch(Future):
    """The parts of one joblib batch that ran on several devices, joined in call order:
    a Future completed when the last part is done (with the first error, if any), then
    passed to ``on_done`` (dropped once called: joblib's callback points back here)."""

    def __init__(self, n_calls, n_parts, on_done=None):
        super().__init__()
        self._results = [None] * n_calls
        self._remaining = n_parts
        self._error = None
        self._on_done = on_done
        self._join_lock = threading.Lock()
        self.set_running_or_notify_cancel()

    def part_done(self, positions, part):
        """Account for the finished ``part`` (a Future) holding the calls at
        ``positions``."""
        try:
            for position, value in zip(positions, part.result()):
                self._results[position] = value
            error = None
        except BaseException as exc:  # CancelledError too
            error = exc
        with self._join_lock:
            self._error = self._error or error
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            if self._error is not None:
                self.set_exception(self._error)
            else:
                self.set_result(self._results)
            on_done, self._on_done = self._on_done, None
            if on_done is not None:
                on_done(self)


def failed(error):
    """A Future that raises ``error``."""
    future = Future()
    future.set_exception(error)
    return future
