"""How the parts of a joblib batch run once routed: on a GPU worker (calls of several
batches together, fused where kernels allow), fused in a CPU worker, and joined back
into one result per joblib batch.

The one module besides the backend that knows joblib's ``BatchedCalls`` (its ``items``
and the nested backend it carries): pin the joblib range when that changes.
"""

from __future__ import annotations

import threading

from joblib import parallel_config
from joblib.parallel import BatchedCalls

from ._devices import cpu_device
from ._fusion import Failure, has_batched_form, run_calls


class GPUTask:
    """The part of a joblib batch that one GPU runs. Fusable tasks (some kernel has a
    batched form) with the same ``config`` (joblib's nested backend) may run together."""

    __slots__ = ("config", "fusable", "items", "n_calls", "nested")

    def __init__(self, batch):
        self.items = batch.items
        self.n_calls = len(batch.items)
        self.nested = (batch._backend, batch._n_jobs)
        # joblib makes a new nested backend object for every batch: compare what it is
        backend = batch._backend
        self.config = (type(backend), getattr(backend, "nesting_level", None), batch._n_jobs)
        self.fusable = has_batched_form(batch.items, "cuda")


def execute_gpu(device, keep_on_device, sizer, tasks):
    """Run tasks on the calling GPU worker: their calls together, fused where kernels
    allow (at most the sizer's batch size per launch); one ``(results, error)`` per task,
    the bytes each call moved and the ``(calls, seconds)`` of each fused launch."""
    backend, n_jobs = tasks[0].nested
    calls = tasks[0].items if len(tasks) == 1 else [c for task in tasks for c in task.items]
    stats = {}
    with parallel_config(backend=backend, n_jobs=n_jobs):
        results = run_calls(calls, device, keep_on_device, sizer.size, stats,
                            on_out_of_memory=sizer.out_of_memory)
    measured = stats.get("bytes_per_call", 0), stats.get("launches", [])
    if len(tasks) == 1:
        return [_outcome(results)], *measured
    outcomes, start = [], 0
    for task in tasks:
        outcomes.append(_outcome(results[start:start + task.n_calls]))
        start += task.n_calls
    return outcomes, *measured


def _outcome(results):
    """``(results, None)``, or ``(None, error)`` for the first call that failed."""
    for result in results:
        if type(result) is Failure:
            return None, result.error
    return results, None


class FusedCPUBatch:
    """A joblib batch run by a CPU worker with its kernels' batched forms."""

    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return len(self.batch)

    def __call__(self):
        batch = self.batch
        with parallel_config(backend=batch._backend, n_jobs=batch._n_jobs):
            results = run_calls(batch.items, cpu_device())
        for result in results:
            if isinstance(result, Failure):
                raise result.error
        return results


class JoinedBatch:
    """The parts of one joblib batch that ran on several devices, joined in call order.

    Fires joblib's callback once, when the last part is done.
    """

    def __init__(self, n_calls, n_parts, callback):
        self._results = [None] * n_calls
        self._remaining = n_parts
        self._error = None
        self._callback = callback
        self._lock = threading.Lock()

    def part_done(self, positions):
        def done(future):
            try:
                for position, value in zip(positions, future.result()):
                    self._results[position] = value
                error = None
            except BaseException as exc:
                error = exc
            with self._lock:
                self._error = self._error or error
                self._remaining -= 1
                last = self._remaining == 0
            if last and self._callback is not None:
                self._callback(self)

        return done

    def result(self):
        if self._error is not None:
            raise self._error
        return self._results


def sub_batch(batch, items):
    """A BatchedCalls with some of ``batch``'s calls and the same nested config."""
    return BatchedCalls(iter(items), (batch._backend, batch._n_jobs),
                        batch._reducer_callback, batch._pickle_cache)


class Outcome:
    """The result of a GPU part: set once by its worker before any callback reads it."""

    __slots__ = ("error", "value")

    def __init__(self):
        self.value = self.error = None

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value
