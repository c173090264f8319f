"""The CPU calls of one route: loky worker processes, or threads of this process whose
native thread pools are limited to their share of the cores.

A pool lives as long as its backend (its statistics too); its workers are started by
the first part of a ``Parallel`` call and stopped when the call ends.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from .._joblib_adapters import FallbackToBackend
from .._platforms import HOST
from ..run.fusion import has_batched_form
from ..run.tasks import FusedCPUBatch, TimedBatch, TorchThreadsBatch
from . import Executor, ExecutorStats


class CPUPool(Executor):
    """The workers of one CPU route.

    Parameters
    ----------
    route : str
        Its name in reports and traces (``"cpu"``, ``"cpu-threads"``).
    processes : bool
        Whether its calls want worker processes (loky) when a call has more than one
        worker; else threads.
    sample : callable, optional
        ``sample(items, n_calls, seconds)``: told what each part cost this route (its
        worker's time at the route's throughput), while ``sampling()`` says so (a cost
        model is in use: the parts are then timed in their workers).
    on_batch : callable, optional
        ``on_batch(n_calls, seconds, whole)``: told each part's round trip (joblib's
        auto batching).
    """

    def __init__(self, route, processes, sample=None, on_batch=None, sampling=None):
        self.route = route
        self.processes = processes
        self._sample = sample
        self._sampling = sampling
        self._on_batch = on_batch
        self.n_workers = 1
        self._make_loky = None
        self._workers = None  # (submit, shutdown, abort) while a call runs
        self._lock = threading.Lock()
        self._stats = ExecutorStats()
        self._last_done = None  # when the last timed part was done
        self._workers_are_processes = False

    def configure(self, n_workers, make_loky=None):
        """For the coming call: ``n_workers``, and ``make_loky()`` giving loky's
        ``(submit, shutdown, abort)`` (it may raise ``FallbackToBackend``)."""
        self.n_workers, self._make_loky = n_workers, make_loky

    # --- the threads that submit (joblib's caller and callback threads) -----------------

    def submit(self, target, batch, on_done=None, whole=None):
        submit = self._started()
        started, n_calls, items = time.perf_counter(), len(batch), batch.items
        if has_batched_form(items, HOST.runs):
            batch = FusedCPUBatch(batch)
        # PyTorch's pools at the worker's share (imported by the calls, maybe)
        batch = TorchThreadsBatch(batch, max(HOST.cores() // self.n_workers, 1),
                                  interop=self._workers_are_processes)
        if self._sampling is None or not self._sampling():
            future = submit(batch)
            future.add_done_callback(self._finisher(started, n_calls, whole, on_done))
            return future
        # measured in the worker, for the cost model: (results, seconds) come back
        timed, future = submit(TimedBatch(batch)), Future()
        future.set_running_or_notify_cancel()
        timed.add_done_callback(self._unwrapper(future, items, started, whole, on_done))
        return future

    def _started(self):
        with self._lock:
            if self._workers is None:
                self._workers = self._start()
            return self._workers[0]

    def _start(self):
        self._workers_are_processes = False
        if self.processes and self.n_workers > 1 and self._make_loky is not None:
            try:
                workers = self._make_loky()
            except FallbackToBackend:  # e.g. below a thread or in a daemon process
                return _threads(self.route, 1)
            self._workers_are_processes = True
            return workers
        return _threads(self.route, self.n_workers)

    # --- loky's and the threads' completion callbacks ---------------------------------

    def _finisher(self, started, n_calls, whole, on_done):
        def finish(future):
            seconds = time.perf_counter() - started
            with self._lock:
                self._stats.add(n_calls, seconds)
            if self._on_batch is not None:
                self._on_batch(n_calls, seconds, whole)
            if on_done is not None:
                on_done(future)

        return finish

    def _unwrapper(self, future, items, started, whole, on_done):
        finish = self._finisher(started, len(items), whole, on_done)

        def unwrap(done):
            try:
                results, seconds = done.result()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                self._sample(items, len(items), self._service(started, seconds))
                future.worker_seconds = seconds
                future.set_result(results)
            finish(future)

        return unwrap

    def _service(self, started, seconds):
        """The seconds a part (``seconds`` in its worker) cost the route, as the cost
        model learns it: a worker's time per part at the route's throughput — its
        workers over the time between two parts done — which counts copying arguments
        and results to worker processes; at most the part's round trip, at least the
        worker's own time. Threads copy nothing: their own time."""
        if not self.processes:
            return seconds
        now = time.perf_counter()
        with self._lock:
            previous, self._last_done = self._last_done, now
        service = now - started
        if previous is not None:
            service = min(service, self.n_workers * (now - previous))
        return max(service, seconds)

    # --- the caller's thread -----------------------------------------------------------

    def abort(self, patience=None):
        """Stop the workers at once; the next part starts fresh ones (a managed
        ``Parallel`` goes on after an error without configuring again)."""
        with self._lock:
            workers, self._workers = self._workers, None
        if workers is not None:
            workers[2]()

    def shutdown(self, wait=True):
        """Stop the workers; the call's loky factory is dropped too (it holds the
        ``Parallel`` call, which holds the backend)."""
        with self._lock:
            workers, self._workers, self._make_loky = self._workers, None, None
        if workers is not None:
            workers[1]()

    def stats(self):
        with self._lock:
            return {self.route: self._stats.row()} if self._stats.calls else {}


def _threads(route, n_threads):
    """``(submit, shutdown, abort)`` of a thread pool whose threads' native pools (and
    the process's BLAS pools, while it lives) get their share of the cores."""
    limits = HOST.thread_limits(n_threads)
    limits.__enter__()  # held while the pool lives: its threads compute on the host
    pool = ThreadPoolExecutor(n_threads, thread_name_prefix=f"devicejoblib-{route}",
                              initializer=HOST.limit_thread, initargs=(n_threads,))

    def shutdown(cancel_futures=False):
        pool.shutdown(cancel_futures=cancel_futures)
        limits.__exit__(None, None, None)

    return pool.submit, shutdown, lambda: shutdown(cancel_futures=True)
