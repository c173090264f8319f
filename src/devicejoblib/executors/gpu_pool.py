"""The GPU pool: one worker thread per GPU, and the thread that hands their results to
joblib.

How a part flows::

    submit(target, part) --> GPUWorker of target's GPU: its queue
        worker thread: takes queued parts together (fusable ones up to its launch
        size), runs them (run.tasks.execute_gpu), completes each part's Future
    --> callback thread: on_done(future) (joblib's callback takes the Parallel call's
        lock and dispatches more work: a GPU worker never waits for it, and goes on
        with its queue; run by the worker itself, the callback cut fused launches of
        small calls to what joblib had dispatched by then: logistic maps fused 4-9x
        threading instead of 11-12x, bench_fusion.py)

A device whose worker finds it lost (a sticky error, binding failed, a call that never
returned) is the pool's business: it stops taking parts, and the calls of its parts that
did not complete are handed to ``reroute`` (routing, in the backend) once, never twice.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import weakref

from .._errors import DeviceUnavailableError
from .._joblib_adapters import sub_batch
from .._kernels import ResidentHold
from ..run.tasks import GPUTask
from . import Executor
from .gpu import CallbackThread, GPUWorker


class GPUPool(Executor):
    """The worker threads of a set of GPUs.

    Parameters
    ----------
    devices : sequence of Device
        The GPUs, each served by one worker thread (started on first use).
    execute_for : callable
        ``execute_for(device)``: the ``execute(tasks, should_stop)`` its worker runs.
    sizers : dict
        Device id -> the GPUBatchSizer of its launches.
    reroute : callable, optional
        ``reroute(device_id, error, batch, items)``: a Future of the results of
        ``items`` (the calls of ``batch`` that did not complete on the lost device),
        routed again; without it they run on the pool's other GPUs, and fail with the
        device's error when none is left.
    observe : callable, optional
        ``observe(device, tasks, n_calls, seconds, cost)``: each group a worker ran.
    on_thread_exit : callable, optional
        Called by each worker thread as it ends.
    on_shutdown : callable, optional
        Called after :meth:`shutdown` stopped the threads.

    The threads stop when :meth:`shutdown` is called, or when the object given to
    :meth:`stop_with` is collected.
    """

    def __init__(self, devices=(), execute_for=None, sizers=None, reroute=None,
                 observe=None, on_thread_exit=None, on_shutdown=None):
        self.devices = tuple(devices)
        self._on_shutdown = on_shutdown
        # workers per platform: the ones that compute on the host share its cores
        self._per_platform = collections.Counter(d.platform for d in self.devices)
        self._reroute = reroute
        self.lost = {}  # device id -> the BrokenDeviceError that took it out
        self.abandoned_any = False  # whether an abort left a call running
        self._callbacks = CallbackThread("devicejoblib-callbacks")
        self._host_limits = contextlib.ExitStack()
        self.workers = {}
        for device in self.devices:
            self.workers[device.id] = GPUWorker(
                device, execute_for(device), sizers[device.id],
                self._per_platform[device.platform], deliver=self._callbacks.deliver,
                rescue=functools.partial(_rescue, weakref.ref(self), device.id),
                observe=observe and functools.partial(observe, device),
                on_exit=on_thread_exit)
        self._resident = ResidentHold(set(self.workers))

    def __bool__(self):
        return bool(self.workers)

    def stop_with(self, owner):
        """Stop the threads (not waiting for a call that outlived an abort) and let go
        of the resident state when ``owner`` is collected, or at exit."""
        return weakref.finalize(owner, _release, [*self.workers.values(), self._callbacks],
                                self._resident)

    # --- the caller's thread: a call's life --------------------------------------------

    def start(self):
        """A ``Parallel`` call starts: accept parts, hold the kernels' resident state."""
        self._callbacks.accepting = True
        self._resident.acquire()

    def limit_host_threads(self):
        """Until :meth:`end_call`, limit native thread pools while GPU workers compute
        on the host (simulated GPUs): each gets its share of the cores."""
        self._host_limits.close()
        for platform, n_workers in self._per_platform.items():
            self._host_limits.enter_context(platform.thread_limits(n_workers))

    def end_call(self):
        """The call ended: the host's thread limits are lifted."""
        self._host_limits.close()

    def abort(self, patience=None):
        """Cancel the parts not started; a call still running is left to finish on its
        own thread (after ``patience`` seconds more, its device is lost)."""
        for worker in self.workers.values():
            worker.cancel_pending()
            worker.abandon_running(patience)
        self.abandoned_any = bool(self.workers)

    def shutdown(self, wait=True):
        """Stop the worker threads (they start again with the next part) and let go of
        the resident state; wait for them unless ``wait=False``."""
        self._callbacks.accepting = False
        _stop_all([*self.workers.values(), self._callbacks], wait)
        self._resident.release()
        self._host_limits.close()
        if self._on_shutdown is not None:
            self._on_shutdown()

    def newly_lost(self):
        """``{device id: error}`` of the devices found lost since the last look: a call
        left running by a timeout outlived as long again (checked for every batch
        once an abort left a call running)."""
        if not self.abandoned_any:
            return {}
        found = {}
        for device_id, worker in self.workers.items():
            if device_id not in self.lost:
                error = worker.check_stuck()
                if error is not None:
                    found[device_id] = self.lost[device_id] = error
        return found

    # --- the threads that submit --------------------------------------------------------

    def submit(self, target, batch, on_done=None, whole=None):
        worker = self.workers[target.route]
        return worker.submit(GPUTask(batch, worker.device), on_done)

    def hand_over(self, on_done, future):
        """Run ``on_done(future)`` on the callback thread (never in a thread that
        dispatches: joblib's callback takes the lock such a thread holds). A call that
        outlived an abort: in this thread, there is no callback thread to start again."""
        self._callbacks.deliver(on_done, future)

    def run(self, batch):
        """Run every call of ``batch`` on the least loaded live GPU and wait:
        ``(results, device id)`` (a Dask worker's GPU part)."""
        live = [w for w in self.workers.values() if w.device.id not in self.lost]
        if not live:
            why = "; ".join(map(str, self.lost.values())) or "this process has none"
            raise DeviceUnavailableError(f"no GPU left to run on: {why}")
        worker = min(live, key=GPUWorker.load)
        return worker.submit(GPUTask(batch, worker.device)).result(), worker.device.id

    def stats(self):
        out = {}
        for device_id, worker in self.workers.items():
            if worker.calls:
                out[device_id] = {"calls": worker.calls, "batches": worker.batches,
                                  "seconds": worker.busy_seconds,
                                  "working_seconds": worker.working_seconds,
                                  **worker.sizer.describe()}
                if worker.device.simulated:  # (what its figures are modelled on)
                    out[device_id]["timing"] = f"simulated, {worker.device.timing}"
            if worker.lost is not None:
                out.setdefault(device_id, {"calls": 0, "batches": 0, "seconds": 0.0})
                out[device_id]["lost"] = str(worker.lost)
        return out

    # --- a worker thread whose device is lost ------------------------------------------

    def _rescue(self, device_id, error, task, future, on_done, done):
        """The calls of ``task`` after its ``done`` results, routed again (once); their
        results complete ``future``, with ``done`` first."""
        self.lost.setdefault(device_id, error)
        items = task.batch.items[len(done):]
        rerouted = (self._reroute or self._elsewhere)(device_id, error, task.batch, items)

        def forward(joined):
            try:
                future.set_result(done + joined.result())
            except BaseException as exc:
                future.set_exception(exc)
            if on_done is not None:
                self.hand_over(on_done, future)

        rerouted.add_done_callback(forward)

    def _elsewhere(self, device_id, error, batch, items):
        """Without ``reroute`` (a Dask worker's pool): the calls ``items`` of ``batch``
        on the least loaded GPU of this pool still live; ``error`` when none is."""
        live = [w for w in self.workers.values() if w.device.id not in self.lost]
        if not live:
            raise error
        worker = min(live, key=GPUWorker.load)
        return worker.submit(GPUTask(sub_batch(batch, items), worker.device))


def _rescue(pool_ref, device_id, error, task, future, on_done, done=()):
    """A task whose device is lost: see :meth:`GPUPool._rescue`; its error when the
    pool is gone or no device is left."""
    pool = pool_ref()
    try:
        if pool is None:
            raise error
        pool._rescue(device_id, error, task, future, on_done, list(done))
    except BaseException as exc:
        if not future.done():
            future.set_exception(exc)
            if on_done is not None and pool is not None:
                pool.hand_over(on_done, future)
            elif on_done is not None:
                on_done(future)


def _release(threads, resident):
    # when the pool is collected, or at exit: a call that outlived an abort is not
    # waited for (it may never return); its daemon thread ends with it
    _stop_all(threads, abandoned=False)
    resident.release()


def _stop_all(workers, wait=True, abandoned=True):
    for worker in workers:
        worker.stop(wait, abandoned)

