"""One long-lived thread per GPU (real or simulated), bound to its device, running the
calls queued to it in order."""

from __future__ import annotations

import abc
import queue
import sys
import threading
import time
from concurrent.futures import CancelledError

from ._context import bind_thread
from ._errors import DeviceUnavailableError
from ._fusion import launch_clock

_STOP = object()


class _QueueThread(abc.ABC):
    """A daemon thread, started on first use, that serves a queue until stopped.

    Each thread gets a queue of its own: a thread told to stop without waiting (after
    an abort, while its current call runs on) finishes that call and exits, and the
    next item starts a fresh thread on a fresh queue.
    """

    def __init__(self, name):
        self.name = name
        self._queue = None
        self._lock = threading.Lock()
        self._thread = None
        self._stopping = []  # threads told to stop without waiting, still to be joined

    def _put(self, item):
        with self._lock:
            if self._thread is None:
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, args=(self._queue,),
                                                name=self.name, daemon=True)
                self._thread.start()
            self._queue.put(item)

    def stop(self, wait=True):
        """Stop the thread after what is already queued; wait for it — and for threads
        stopped earlier without waiting — unless told not to."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(_STOP)
                self._stopping.append(thread)
            if not wait:
                return
            stopping, self._stopping = self._stopping, []
        for thread in stopping:
            if thread is not threading.current_thread():
                thread.join()

    @abc.abstractmethod
    def _run(self, items):
        """Serve the queue ``items`` until ``_STOP`` comes out of it."""


class GPUWorker(_QueueThread):
    """The worker thread of one GPU: binds itself to the device, then runs tasks.

    A task is a part of a joblib batch: an object with ``n_calls``, ``fusable`` and a
    ``config``. The worker takes queued fusable tasks with equal configs together, up
    to its sizer's batch size (other tasks run alone: taking them together would only
    delay their callbacks), runs them with one ``execute(tasks)`` and one
    synchronisation, tells the sizer how long the launches took, and fires each task's
    ``done(result, error)`` exactly once, whether it succeeded, failed or was cancelled.

    Parameters
    ----------
    device : Device
    execute : callable
        Runs a list of tasks on this thread; returns one ``(result, error)`` per task,
        the bytes each call moved, and ``(calls, seconds)`` per fused launch.
    sizer : GPUBatchSizer
        Decides how many calls to take at once; told how long each batch took.
    keep_on_device : bool
        Seen by the calls through :func:`devicejoblib._context.binding`.
    """

    def __init__(self, device, execute, sizer, keep_on_device=False):
        super().__init__(f"devicejoblib-{device.id}")
        self.device = device
        self.sizer = sizer
        self.keep_on_device = keep_on_device
        self.pending_calls = 0
        self.calls = self.batches = 0
        self.busy_seconds = 0.0
        self._execute = execute
        self._epoch = 0  # tasks submitted before the last cancel_pending() are dropped

    def submit(self, task, done):
        """Queue ``task``; start the thread on first use."""
        with self._lock:
            self.pending_calls += task.n_calls
        self._put((task, done, self._epoch))

    def cancel_pending(self):
        """Cancel every task not started yet: each fires ``CancelledError`` when the
        worker reaches it, instead of running."""
        with self._lock:
            self._epoch += 1

    def _run(self, items):
        bind_thread(self.device, self.keep_on_device)
        try:
            sync, bind_error = _bind_cuda(self.device), None
        except Exception as exc:  # every task fails with it: nothing may wait forever
            sync, bind_error = None, DeviceUnavailableError(
                f"could not bind a worker thread to {self.device}: {exc}")
            bind_error.__cause__ = exc
        held = None
        while True:
            group, held = self._next_group(items, held)
            if group is None:
                return
            # a method of its own, so that nothing of the batch (joblib's callbacks hold
            # the Parallel call and its backend) stays referenced while the worker idles
            self._run_group(self._drop_cancelled(group), sync, bind_error)
            del group

    def _drop_cancelled(self, group):
        live = [item for item in group if item[2] == self._epoch]
        for task, done, _ in (item for item in group if item[2] != self._epoch):
            with self._lock:
                self.pending_calls -= task.n_calls
            done(None, CancelledError(f"cancelled on {self.device}"))
        return live

    def _run_group(self, group, sync, bind_error):
        if not group:
            return
        tasks = [task for task, _, _ in group]
        n_calls = sum(task.n_calls for task in tasks)
        start, clock = time.perf_counter(), launch_clock(self.device)
        work_start = clock()
        try:
            if bind_error is not None:
                raise bind_error
            outcomes, bytes_per_call, launches = self._execute(tasks)
            sync()
        except BaseException as exc:  # handed to the caller through `done`
            outcomes, bytes_per_call, launches = [(None, exc)] * len(group), 0, []
        seconds = time.perf_counter() - start
        # fused launches say how the launch size pays; without any, the whole batch does
        whole = (n_calls, clock() - work_start + self.device.launch_latency)
        for calls, launch_seconds in launches or [whole]:
            self.sizer.record(calls, launch_seconds, bytes_per_call)
        with self._lock:
            self.pending_calls -= n_calls
            self.calls += n_calls
            self.batches += 1
            self.busy_seconds += seconds
        for (_, done, _), (result, error) in zip(group, outcomes):
            done(result, error)

    def _next_group(self, items, held):
        """``(tasks to run together up to the batch size, the task that must start the
        next group)``; ``(None, None)`` to stop."""
        first = held or items.get()
        if first is _STOP:
            return None, None
        group, n_calls = [first], first[0].n_calls
        if not first[0].fusable:
            return group, None
        limit = self.sizer.size
        while n_calls < limit:
            try:
                item = items.get_nowait()
            except queue.Empty:
                break
            if item is _STOP or not item[0].fusable or item[0].config != first[0].config:
                return group, item
            group.append(item)
            n_calls += item[0].n_calls
        return group, None


class CallbackThread(_QueueThread):
    """One thread that runs completion callbacks in order, so that a GPU worker hands
    its results over and goes on with its queue instead of waiting on the caller's
    locks (joblib's callback takes the Parallel call's lock and dispatches more work)."""

    def call(self, function, argument):
        """Run ``function(argument)`` on the callback thread."""
        self._put((function, argument))

    def _run(self, items):
        while True:
            item = items.get()
            if item is _STOP:
                return
            function, argument = item
            try:
                function(argument)
            except BaseException:  # report it, and keep serving the other callbacks
                threading.excepthook(threading.ExceptHookArgs(
                    (*sys.exc_info(), threading.current_thread())))
            del item, function, argument  # keep nothing alive while idle


def _bind_cuda(device):
    """Bind the calling thread to a real GPU with its own non-blocking stream.

    Returns the function that waits for the thread's queued GPU work.
    """
    if device.simulated:
        return lambda: None
    numba_cuda = sys.modules.get("numba.cuda")
    if device.provider == "numba" or numba_cuda is not None:
        # the program uses Numba CUDA: give this thread its context on the device too
        from numba import cuda as numba_cuda

        numba_cuda.select_device(device.index)
    if device.provider != "cupy":
        return numba_cuda.synchronize
    import cupy

    cupy.cuda.Device(device.index).use()
    stream = cupy.cuda.Stream(non_blocking=True)
    stream.use()
    return stream.synchronize
