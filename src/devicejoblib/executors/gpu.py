"""One long-lived thread per GPU (real or simulated), bound to its device, running the
calls queued to it in order; and the thread that runs completion callbacks.

A worker's life::

    dispatching threads: submit(task) -> a Future, the task on the worker's queue
    worker thread:       bind to the device; then, until told to stop:
                         take a group (fusable tasks together, up to the launch size)
                         -> execute -> sync -> time it (sizer, cost model)
                         -> complete each task's Future -> its on_done
    the caller's thread: cancel_pending / abandon_running (an abort), stop
"""

from __future__ import annotations

import abc
import queue
import sys
import threading
import time
from concurrent.futures import Future

from .._context import bind_thread
from .._errors import BrokenDeviceError, with_worker_traceback
from ..run.fusion import Failure, Lost

_STOP = object()
#: Load added to a GPU whose call outlived an abort: routing prefers any other device.
_STUCK_LOAD = 1 << 40


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

    def _start_thread(self):
        """A fresh thread on a fresh queue (the caller holds the lock)."""
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(self._queue,),
                                        name=self.name, daemon=True)
        self._thread.start()

    def stop(self, wait=True, abandoned=True):
        """Stop the thread after what is already queued; wait for it — and, when
        ``abandoned``, for threads stopped earlier without waiting (a call that outlived
        an abort) — unless told not to."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(_STOP)
                self._stopping.append(thread)
            if not wait:
                return
            if abandoned:
                stopping, self._stopping = self._stopping, []
            else:
                stopping = [thread] if thread is not None else []
                self._stopping = [t for t in self._stopping if t is not thread]
        for thread in stopping:
            if thread is not threading.current_thread():
                self._join(thread)

    def _join(self, thread):
        thread.join()

    @abc.abstractmethod
    def _run(self, items):
        """Serve the queue ``items`` until ``_STOP`` comes out of it."""


class GPUWorker(_QueueThread):
    """The worker thread of one GPU: binds itself to the device, then runs tasks.

    A task is a part of a joblib batch: an object with ``n_calls``, ``fusable`` and a
    ``config``. The worker takes queued fusable tasks with equal configs together, up
    to its sizer's batch size (other tasks run alone: taking them together would only
    delay their results), runs them with one ``execute(tasks)`` and one synchronisation,
    tells the sizer how long the launches took, and completes each task's future.

    Parameters
    ----------
    device : Device
    execute : callable
        ``execute(tasks, should_stop)`` runs a list of tasks on this thread (stopping
        between calls once ``should_stop()``); returns a
        :class:`~devicejoblib.run.fusion.Ran` with one result list (or
        :class:`~devicejoblib.run.fusion.Failure`) per task.
    sizer : GPUBatchSizer
        Decides how many calls to take at once; told how long each batch took.
    siblings : int
        Workers of the same platform, itself included, that may compute at once (on
        the host, for simulated GPUs: each thread's native pools get its share).
    deliver : callable, optional
        ``deliver(on_done, future)`` passes a completed future to its ``on_done``
        (default: calls it in the worker's thread; the pool hands it to its callback
        thread).
    rescue : callable, optional
        ``rescue(error, task, future, on_done, done)`` takes over a task this worker
        cannot finish (its device is lost: ``error`` is the BrokenDeviceError; ``done``
        the results of its calls that completed) and completes its future; without it
        such tasks fail with their error.
    observe : callable, optional
        ``observe(tasks, n_calls, seconds, cost)``: told how long each group that
        completed took (``tasks`` its tasks, whose ``items`` are its calls; ``cost``
        its seconds as the platform's ``start_cost_timer`` counts them, None if that
        timer failed), for the trace and the cost model.
    on_exit : callable, optional
        Called by each worker thread as it ends (the cost model takes the samples it
        held back).
    """

    def __init__(self, device, execute, sizer, siblings=1, deliver=None, rescue=None,
                 observe=None, on_exit=None):
        super().__init__(f"devicejoblib-{device.id}")
        self.device = device
        self.sizer = sizer
        self.siblings = siblings
        self.pending_calls = 0
        self.calls = self.batches = 0
        self.busy_seconds = 0.0
        self.working_seconds = 0.0  # of those, by the platform's cost timer
        self._busy = set()  # threads running a group (an abandoned one and the current)
        self._epoch = 0  # bumped by an abort: a running group starts no more calls
        self._execute = execute
        self._deliver = deliver or _call
        self._rescue = rescue
        self._observe = observe
        self._on_exit = on_exit
        self.lost = None  # the BrokenDeviceError once the device is lost
        self._abandoned = []  # (thread, deadline or None) of calls left running by aborts
        self._queued = {}  # future -> calls, of tasks not started: what cancel_pending() cancels

    # --- the threads that dispatch --------------------------------------------------------

    def submit(self, task, on_done=None):
        """Queue ``task``; start the thread on first use.

        Returns its Future, completed with the task's results (a list) or its first
        error, or cancelled. ``on_done(future)`` is called (by ``deliver``) once it is,
        then dropped (the Future keeps no reference to it: joblib's callbacks point back
        at the Future).
        """
        future = Future()
        with self._lock:  # (one lock a part: the worker thread takes it too)
            self.pending_calls += task.n_calls
            self._queued[future] = (task.n_calls, on_done)
            if self._thread is None:
                self._start_thread()
            self._queue.put((task, future, on_done))
        return future

    # --- the caller's thread: aborts and stuck calls ----------------------------------------

    def abandon_running(self, patience=None):
        """After an abort: leave a call still running to finish on its own (its thread
        exits then); later tasks start on a fresh thread, not behind it. Given
        ``patience`` (the ``Parallel`` call's timeout), a call still running that many
        seconds later never returns: :meth:`check_stuck` then marks the device lost."""
        with self._lock:
            thread = self._thread if self._thread in self._busy else None
        if thread is None:
            return
        self.stop(wait=False)
        deadline = None if patience is None else time.monotonic() + patience
        self._abandoned.append((thread, deadline))

    @property
    def stuck(self):
        """Whether a call left running by an abort still runs on the device (routing
        counts the device as busy)."""
        if self._abandoned:
            self._abandoned = [(t, d) for t, d in self._abandoned if t.is_alive()]
        return bool(self._abandoned)

    def check_stuck(self):
        """Mark the device lost if a call left running by a timeout outlived its
        patience; the BrokenDeviceError of a lost device, else None."""
        if self._abandoned and self.lost is None and self.stuck:
            now = time.monotonic()
            if any(d is not None and now > d for _, d in self._abandoned):
                self.lost = self._broken(
                    TimeoutError("a call left running by a Parallel call's timeout was "
                                 "still running after as long again"),
                    "a call never returned")
        return self.lost

    def _join(self, thread):
        # a call abandoned by a timeout is waited for until its patience runs out only
        deadline = next((d for t, d in self._abandoned if t is thread), None)
        thread.join(None if deadline is None else max(deadline - time.monotonic(), 0))

    def load(self):
        """Calls pending on the device, as routing weighs them: a device whose call
        outlived an abort counts as busier than any other."""
        return self.pending_calls + (_STUCK_LOAD if self._abandoned and self.stuck else 0)

    def cancel_pending(self):
        """Cancel every task not started yet (``Future.cancel``); a running group starts
        no more of its calls."""
        with self._lock:
            self._epoch += 1
            queued, self._queued = self._queued, {}
        for future, (n_calls, on_done) in queued.items():
            if future.cancel():
                with self._lock:
                    self.pending_calls -= n_calls
                if on_done is not None:
                    self._deliver(on_done, future)

    # --- the worker thread ------------------------------------------------------------------

    def _run(self, items):
        thread = threading.current_thread()
        bind_thread(self.device)
        try:
            sync, broken = self.device.platform.bind(self.device), None
            self.device.platform.limit_thread(self.siblings)
        except Exception as exc:  # every task fails with it: nothing may wait forever
            sync, broken = None, exc
        held = None
        try:
            while True:
                group, held = self._next_group(items, held)
                if group is None:
                    return
                # a method of its own, so that nothing of the batch (joblib's callbacks
                # hold the Parallel call and its backend) stays referenced while idle
                self._run_group(self._start(group, thread), sync, broken, thread)
                del group
        finally:
            if self._on_exit is not None:
                self._on_exit()

    def _start(self, group, thread):
        """The tasks of ``group`` that were not cancelled, now marked running (and
        ``thread``, this one, busy)."""
        with self._lock:
            for _, future, _ in group:
                self._queued.pop(future, None)
            started = []
            for item in group:
                if item[1].set_running_or_notify_cancel():
                    started.append(item)
            if started:
                self._busy.add(thread)
        return started

    def _run_group(self, group, sync, broken, thread):
        if not group:
            return
        n_calls = group[0][0].n_calls if len(group) == 1 else sum(t.n_calls for t, _, _ in group)
        if broken is not None and self.lost is None:
            self.lost = self._broken(broken, "binding it to the device failed")
        if self.lost is not None and self._rescue is not None:
            self._hand_over(group, n_calls, thread)
            return
        try:
            results, seconds, cost = self._execute_group(group, n_calls, sync, broken)
        except BaseException as exc:  # whatever failed, every future is completed
            results, seconds, cost = [Failure(exc)] * len(group), None, None
        with self._lock:
            self.pending_calls -= n_calls
            self._busy.discard(thread)
            if seconds is not None:
                self.calls += n_calls
                self.batches += 1
                self.busy_seconds += seconds
                self.working_seconds += seconds if cost is None else cost
        for (task, future, on_done), result in zip(group, results):
            if type(result) is Lost and self._rescue is not None:
                self.lost = self.lost or self._broken(result.error, "its device was lost")
                self._rescue(self.lost, task, future, on_done, result.done)
                continue
            if type(result) is Failure or type(result) is Lost:
                future.set_exception(with_worker_traceback(result.error))
            else:
                future.set_result(result)
            if on_done is not None:
                try:
                    self._deliver(on_done, future)
                except BaseException:  # reported; the group's other futures come next
                    _report_error()

    def _hand_over(self, group, n_calls, thread):
        """The device is lost: every task of the group goes to ``rescue`` (none ran)."""
        with self._lock:
            self.pending_calls -= n_calls
            self._busy.discard(thread)
        for task, future, on_done in group:
            self._rescue(self.lost, task, future, on_done)

    def _execute_group(self, group, n_calls, sync, broken):
        """``(results of the group's tasks (a list, or a Failure, each), seconds, cost)``,
        the launches timed for the sizer."""
        device, sizer = self.device, self.sizer
        start = time.perf_counter()
        # the launch timer only where the sizer would learn from it (it may cost device
        # events); the cost timer's errors cost a measurement, never the results
        elapsed = device.platform.start_timer(device) if sizer.measures(n_calls) else None
        try:
            cost = device.platform.start_cost_timer(device)
        except Exception:
            cost = None
        tasks = [group[0][0]] if len(group) == 1 else [task for task, _, _ in group]
        try:
            if broken is not None:
                raise self._broken(broken, "binding it to the device failed")
            epoch = self._epoch
            ran = self._execute(tasks, lambda: self._epoch != epoch)
            sync()
            results, launches = ran.results, ran.launches
            if ran.bytes_per_call:
                sizer.note_bytes(ran.bytes_per_call)
        except BaseException as exc:  # handed to the caller through the futures
            results, launches = [Failure(exc)] * len(group), []
        seconds = time.perf_counter() - start
        try:
            cost = None if cost is None else min(cost(), seconds)  # (timers read apart)
        except Exception:
            cost = None
        if self._observe is not None:
            for result in results:
                if isinstance(result, Failure):
                    break
            else:
                self._observe(tasks, n_calls, seconds, cost)
        # fused launches say how the launch size pays; without any, the whole batch does
        for calls, launch_seconds in launches:
            sizer.record(calls, launch_seconds)
        if not launches and elapsed is not None:
            sizer.record(n_calls, elapsed())
        return results, seconds, cost

    def _broken(self, cause, why):
        """A fresh error for each group (one instance re-raised would pile tracebacks).

        The cause keeps its traceback as text only: its frames hold the failed batch,
        and through joblib's callbacks the backend, which a worker must not keep alive.
        """
        with_worker_traceback(cause)
        cause.__traceback__ = None
        error = BrokenDeviceError(f"the worker thread of {self.device} cannot run calls: "
                                  f"{why}: {type(cause).__name__}: {cause}")
        error.__cause__ = cause
        return error

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

    def __init__(self, name):
        super().__init__(name)
        self.accepting = True  # False once its pool is shut down, until it starts again

    def deliver(self, function, argument):
        """Run ``function(argument)`` on the callback thread; in the calling thread once
        no longer ``accepting`` (a call that outlived an abort: there is no callback
        thread to start again)."""
        if not self.accepting:
            function(argument)
            return
        with self._lock:
            if self._thread is None:
                self._start_thread()
            self._queue.put((function, argument))

    def _run(self, items):
        while True:
            item = items.get()
            if item is _STOP:
                return
            function, argument = item
            try:
                function(argument)
            except BaseException:  # reported; and keep serving the other callbacks
                _report_error()
            del item, function, argument  # keep nothing alive while idle


def _call(function, argument):
    function(argument)


def _report_error():
    """Report the error being handled as a thread's uncaught error is (the thread goes
    on: nothing queued to it may be left waiting)."""
    threading.excepthook(threading.ExceptHookArgs(
        (*sys.exc_info(), threading.current_thread())))
