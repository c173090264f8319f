"""One long-lived thread per GPU (real or simulated), bound to its device, running the
calls queued to it in order."""

from __future__ import annotations

import queue
import sys
import threading
import time
from concurrent.futures import CancelledError

from ._context import bind_thread
from ._errors import DeviceUnavailableError

_STOP = object()


class GPUWorker:
    """The worker thread of one GPU: binds itself to the device, then runs tasks.

    A task is a callable run on the thread (a batch of calls) and a ``done(result,
    error, seconds)`` callback fired exactly once, on the worker thread, whether the
    task succeeded, failed or was cancelled.
    """

    def __init__(self, device, keep_on_device=False):
        self.device = device
        self.keep_on_device = keep_on_device
        self.pending_calls = 0
        self.calls = self.batches = 0
        self.busy_seconds = 0.0
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread = None

    def submit(self, task, n_calls, done):
        """Queue ``task`` (``n_calls`` calls); start the thread on first use."""
        with self._lock:
            self.pending_calls += n_calls
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"devicejoblib-{self.device.id}", daemon=True)
                self._thread.start()
        self._queue.put((task, n_calls, done))

    def cancel_pending(self):
        """Drop the tasks still queued; their callbacks fire with ``CancelledError``."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                self._queue.put(_STOP)
                return
            _, n_calls, done = item
            self._finish(n_calls, 0.0)
            done(None, CancelledError(f"cancelled on {self.device}"), 0.0)

    def stop(self):
        """Stop the thread once the queued tasks are done, and wait for it."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            if thread is not threading.current_thread():
                thread.join()

    def _run(self):
        bind_thread(self.device, self.keep_on_device)
        try:
            sync, bind_error = _bind_cuda(self.device), None
        except Exception as exc:  # every task fails with it: nothing may wait forever
            sync, bind_error = None, DeviceUnavailableError(
                f"could not bind a worker thread to {self.device}: {exc}")
            bind_error.__cause__ = exc
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            task, n_calls, done = item
            start = time.perf_counter()
            try:
                if bind_error is not None:
                    raise bind_error
                result, error = task(), None
                sync()
            except BaseException as exc:  # handed to the caller through `done`
                result, error = None, exc
            seconds = time.perf_counter() - start
            self._finish(n_calls, seconds)
            done(result, error, seconds)
            # Drop the last task's references (joblib's callback holds the Parallel call
            # and its backend) so that an idle worker keeps nothing alive.
            del item, task, done, result, error

    def _finish(self, n_calls, seconds):
        with self._lock:
            self.pending_calls -= n_calls
            self.calls += n_calls
            self.batches += 1
            self.busy_seconds += seconds


class CallbackThread:
    """One thread that runs completion callbacks in order, so that a GPU worker hands
    its results over and goes on with its queue instead of waiting on the caller's
    locks (joblib's callback takes the Parallel call's lock and dispatches more work)."""

    def __init__(self, name):
        self.name = name
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread = None

    def call(self, function, argument):
        """Run ``function(argument)`` on the callback thread."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self.name,
                                                    daemon=True)
                    self._thread.start()
        self._queue.put((function, argument))

    def stop(self):
        """Run the callbacks already queued, then stop the thread and wait for it."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            if thread is not threading.current_thread():
                thread.join()

    def _run(self):
        while True:
            item = self._queue.get()
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
