"""The joblib backend ``"device"``: joblib's contract, and nothing else.

How a batch flows::

    joblib: submit(batch, callback)
      --> routing splits its calls into parts, one per target (policy.routing)
      --> each part to the executor of its target: the GPU pool (a worker thread per
          GPU), a CPU pool (loky processes or threads), or the Dask client
      --> the parts complete; a batch of several parts is joined in call order
          (run.tasks.JoinedBatch)
      --> joblib's callback, once, on the GPU pool's callback thread (or loky's)

Decisions (routing, learned placement, batch sizes, the model store) live in
``policy``; the machinery that runs parts in ``executors``; what is counted and traced
in ``observe``. The backend serves one ``Parallel`` call at a time.
"""

from __future__ import annotations

import functools
import threading
import weakref
from concurrent.futures import CancelledError
from dataclasses import dataclass

from ._assemble import GPUObserver, make_gpu_pool, sample, worker_gpu_pool
from ._config import OWN_PARAMETERS, BackendConfig
from ._joblib_adapters import (
    ParallelBackendBase,
    active_backend,
    cpu_n_jobs,
    make_loky,
    sub_batch,
)
from ._utils import guarded_timer
from .executors.cpu import CPUPool
from .executors.dask_client import DaskClientExecutor
from .observe.bookkeeping import after, guarded
from .observe.progress import Progress
from .observe.report import call_report, format_report
from .observe.trace import Trace, watched
from .policy.batching import BatchPolicy
from .policy.cluster_routing import ClusterRouter
from .policy.model_store import get_model, learnt_launch_size, remember_launch_sizes
from .policy.routing import CPU_PROCESSES, CPU_THREADS, Router
from .run.fusion import run_bound
from .run.tasks import JoinedBatch, failed


@dataclass
class _Call:
    """What one ``Parallel`` call holds, from configure() to terminate()."""

    parallel: object = None
    aborted: bool = False
    progress: Progress | None = None
    before: tuple | None = None  # (report, auto decisions) as a verbose call started


class DeviceBackend(ParallelBackendBase):

    supports_retrieve_callback = True
    # GPU workers are threads of this process, and require="sharedmem" sends CPU calls
    # to threads too: every call then shares the caller's memory.
    supports_sharedmem = True
    default_n_jobs = 1

    def __init__(self, devices=None, placement=None, cpu_backend="loky", n_cpu_jobs=None,
                 keep_on_device=False, max_batch_size=None, client=None, retries=0,
                 wait_for_workers_timeout=10.0, trace=None, progress=False,
                 nesting_level=None, inner_max_num_threads=None, **backend_kwargs):
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **backend_kwargs)
        self.config = config = BackendConfig.from_arguments(
            devices, placement, cpu_backend, n_cpu_jobs, keep_on_device, max_batch_size,
            client, retries, wait_for_workers_timeout, trace, progress, **backend_kwargs)
        self.batching = BatchPolicy(config.max_batch_size, nesting_level, learnt_launch_size)
        self._trace = Trace(config.trace) if config.trace is not None else None
        self._call = _Call()
        self._serving = threading.Lock()  # held while configure() claims the backend
        self._claimed_by = None  # the Parallel this backend serves, until terminate()
        self.cluster = None
        if config.on_cluster:
            # a Parallel call without n_jobs uses the cluster, as joblib's dask backend
            self.default_n_jobs, self.supports_sharedmem = -1, False
            self.cluster = DaskClientExecutor(
                config.client, worker_gpu_pool, self.batching.cluster_part_completed,
                config.retries, config.wait_for_workers_timeout)
            self.router = ClusterRouter(self.cluster, config.placement)
            self.gpus = make_gpu_pool((), self.batching)
        else:
            workers = {}  # (the load reads the workers, not the backend: no cycle)
            self.router = Router(config.devices, config.placement, model=get_model,
                                 load=lambda device_id: workers[device_id].load())
            self.gpus = make_gpu_pool(
                self.router.gpus, self.batching, config.keep_on_device,
                self.router.cpu_allowed, functools.partial(_reroute, weakref.ref(self)),
                GPUObserver(self.router, self._trace))
            workers.update(self.gpus.workers)
        sample_cpu = None if self.cluster is not None else guarded(
            "the placement model", functools.partial(self.router.observe, self.router.cpu))
        self.cpu = {route: CPUPool(route, route == CPU_PROCESSES, sample_cpu,
                                   self.batching.cpu_batch_completed)
                    for route in (CPU_PROCESSES, CPU_THREADS)}
        self._finalizer = self.gpus.stop_with(self)
        if self.cluster is not None:
            weakref.finalize(self, self.cluster.shutdown)

    @property
    def uses_threads(self):
        return self.config.cpu_backend == "threading"

    @property
    def max_batch_size(self):
        """Upper bound for automatic batch sizes."""
        return self.config.max_batch_size

    @property
    def runs_in_caller(self):
        """Whether the kernels of a ``Parallel(n_jobs=1)`` call are routed (to GPUs)."""
        return bool(self.gpus)

    # --- joblib's contract: the caller's thread --------------------------------------

    def effective_n_jobs(self, n_jobs):
        # joblib slices the input into this many batches per round and keeps twice as
        # many in flight. max(), not the sum, keeps CPU batches as loky's would be (the
        # sum cost 10% per CPU call, bench_dispatch.py); with a GPU never 1 (joblib would
        # bypass the backend) unless the call asks for one job: it then runs in the
        # caller, the kernels it calls routed by run_in_caller.
        if self.cluster is not None:
            return self.cluster.n_jobs()
        cpu = self._cpu_n_jobs(n_jobs)
        if not self.gpus or self._in_caller(n_jobs):
            return cpu
        return max(cpu, len(self.gpus.workers), 2)

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **kwargs):
        given = [name for name in OWN_PARAMETERS if name in kwargs]
        if given:  # Parallel(backend="device", client=...) hands them over too late
            raise TypeError(
                f"Invalid argument {given[0]}= for Parallel(backend='device'): the device "
                f"backend's arguments go to parallel_config(backend='device', "
                f"{given[0]}=...) or DeviceBackend({given[0]}=...)")
        with self._serving:  # one call at a time: a second would share this call's state
            if self._claimed_by is not None and self._claimed_by is not parallel:
                raise RuntimeError(
                    "Invalid use of a DeviceBackend by two Parallel calls at once (it "
                    "serves one call at a time, as joblib's own backends do): give each "
                    "thread its own DeviceBackend, or parallel_config(backend='device') "
                    "in each")
            self._claimed_by = parallel
        try:
            n_jobs = self._configure(n_jobs, parallel, prefer, require, kwargs)
        except BaseException:
            self._claimed_by = None
            raise
        if n_jobs == 1:  # joblib runs the calls itself, and will not terminate()
            self._claimed_by = None
        return n_jobs

    def _configure(self, n_jobs, parallel, prefer, require, loky_kwargs):
        self.gpus.start()
        cpu_jobs = self._cpu_n_jobs(n_jobs)
        threads = self.uses_threads or prefer == "threads" or require == "sharedmem"
        self.router.start_call(CPU_THREADS if threads else CPU_PROCESSES, cpu_jobs)
        if self.cluster is not None:
            self.cluster.refresh()
        elif self.gpus and self._in_caller(n_jobs):
            # joblib runs the calls in this thread, one by one, and never terminates the
            # backend after: keep nothing of the call (see run_in_caller)
            return 1
        self._call = _Call(parallel, progress=Progress() if self.config.progress else None)
        make = functools.partial(make_loky, parallel, cpu_jobs, self.nesting_level,
                                 self.inner_max_num_threads, **loky_kwargs)
        for pool in self.cpu.values():
            pool.configure(cpu_jobs, make)
        self.batching.start_call(parallel)
        self.gpus.limit_host_threads()
        return self.effective_n_jobs(n_jobs)

    def start_call(self):
        self._call.aborted = False  # a managed Parallel may call again after an error
        parallel = self._call.parallel
        if parallel is not None and parallel.verbose:  # the report is per call
            placer = self.router.placer
            self._call.before = (self.report(),
                                 None if placer is None else placer.decisions_now())

    def compute_batch_size(self):
        return self.batching.compute_batch_size()

    def batch_completed(self, batch_size, duration):
        """Ignored: CPU parts report their own durations; GPU workers time themselves."""

    def retrieve_result_callback(self, out):
        return out.result()

    def abort_everything(self, ensure_ready=True):
        self._call.aborted = True
        if self.cluster is not None:
            self.cluster.abort()
        # a call still running this long after a timeout never returns: device lost
        self.gpus.abort(getattr(self._call.parallel, "timeout", None))
        for pool in self.cpu.values():
            pool.abort()

    def stop_call(self):
        parallel, (report, placed) = self._call.parallel, self._call.before or ({}, None)
        if parallel is not None and parallel.verbose:
            for line in call_report(self.report(), report, self.router.placer, placed):
                parallel._print(line)

    def terminate(self):
        try:
            self._terminate()
        finally:
            self._claimed_by = None  # the next Parallel call may use this backend

    def _terminate(self):
        # (the call's state is dropped: the backend <-> Parallel cycle is broken, and
        # once the caller drops both, the finalizer joins the GPU threads)
        call, self._call = self._call, _Call()
        for pool in self.cpu.values():
            pool.shutdown()
        self.gpus.end_call()
        if call.progress is not None:
            call.progress.close()
        if self._trace is not None:
            self._trace.write()
        self.batching.end_call()
        # Inside `parallel_config(backend=...)` the same backend serves the next Parallel
        # call: keep its GPU threads; they stop when the backend is collected or shut down.
        if active_backend() is not self:
            # after an error or a timeout, do not wait for the GPU calls still running:
            # their threads exit when those calls return. A cluster's pools stay, with
            # what they learnt, until the backend is collected or shut down.
            self.gpus.shutdown(wait=not call.aborted)
        # (after the threads stopped: what they held back for the model is saved too)
        remember_launch_sizes(self.batching.launch_sizers.values())

    # --- joblib's contract: the threads that dispatch (caller, callbacks) -------------

    def submit(self, func, callback=None):
        # joblib calls submit from the callback thread too, where a raised error would
        # be lost and the batch never completed: errors become the batch's outcome.
        if self._call.aborted:  # a batch dispatched while the call aborts: start nothing
            return self._failed(CancelledError("the Parallel call was aborted"), callback)
        self._check_lost()
        try:
            return self._dispatch(func, func.items, callback)
        except BaseException as exc:
            return self._failed(exc, callback)

    def _dispatch(self, batch, items, callback, watch=True):
        """Route ``items`` (calls of ``batch``) and hand each part to its executor; the
        Future of all their results, in order."""
        ledger = {}  # target -> what a part placed "auto" queued on its device
        parts = self.router.split(items, ledger)
        if watch:
            self.batching.gpu_bound = all(target.is_gpu for target in parts)
        if len(parts) == 1 and items is batch.items:
            (target, _), = parts.items()
            return self._submit_part(target, batch, callback, ledger, watch=watch)
        joined = JoinedBatch(len(items), len(parts), callback)
        for target, positions in parts.items():
            positions = range(len(items)) if positions is None else positions
            self._submit_part(target, sub_batch(batch, [items[i] for i in positions]),
                              functools.partial(joined.part_done, positions), ledger,
                              len(items), watch)
        return joined

    def _submit_part(self, target, batch, callback, ledger, whole=None, watch=True):
        """Submit the part ``batch`` (of a joblib batch of ``whole`` calls) to the
        executor of ``target``; its Future."""
        entry = ledger.pop(target, None) if ledger else None
        if entry is not None:  # what the part queued in the cost model's view
            callback = after(lambda _: self.router.settle(entry), callback,
                             "the placement model")
        call = self._call
        if watch and (call.progress is not None or self._trace is not None):
            callback = watched(target, batch, callback, call.progress, self._trace,
                               call.parallel)
        if target.is_gpu and self.batching.gpu_bound:
            callback = self.batching.dispatch.timing(len(batch), callback)
        try:
            executor = self.cluster or (self.gpus if target.is_gpu else self.cpu[target.route])
            return executor.submit(target, batch, callback, whole)
        except BaseException as exc:
            return self._failed(exc, callback)

    def _failed(self, error, callback):
        """A Future that raises ``error``, its callback fired on the callback thread."""
        future = failed(error)
        if callback is not None:
            self.gpus.hand_over(callback, future)
        return future

    def _check_lost(self):
        """Route no more calls to a GPU the pool found lost (a call that never returned)."""
        for device_id, error in self.gpus.newly_lost().items():
            self.router.lose(device_id, error)

    # --- devicejoblib's own ------------------------------------------------------------

    def shutdown(self, wait=True):
        """Stop the GPU worker threads (they restart on the next call) — and wait for
        them unless ``wait=False`` — and let go of the kernels' resident state on the
        GPUs (released once no backend holds those GPUs); on a cluster, of this backend's
        pools on its workers (their threads, launch sizes and resident state)."""
        self.gpus.shutdown(wait)
        if self.cluster is not None:
            self.cluster.shutdown()
        remember_launch_sizes(self.batching.launch_sizers.values())

    def report(self):
        """Calls, batches and seconds per device since this backend was made.

        GPU seconds are the worker's busy time, and ``working_seconds`` the part of it
        its platform's cost timer counts (on a real GPU the thread's CPU time, waits
        for the GPU included): the rest the thread was not running, waiting for the
        GIL, a core or I/O. CPU seconds are from submission to result (they include
        queueing and transfer to worker processes).
        """
        self._check_lost()
        out = {}
        for executor in (*self.cpu.values(), self.gpus, self.cluster):
            if executor is not None:
                out.update(executor.stats())
        if self.router.placer is not None:
            for device_id, placed in self.router.placer.calls_per_device().items():
                route = device_id if device_id in self.gpus.workers else self.router.cpu_route
                row = out.setdefault(route, {"calls": 0, "batches": 0, "seconds": 0.0})
                row.update(placed)
        return out

    def explain(self):
        """Why calls placed "auto" went where they did: per kernel and footprint, the
        predicted seconds per call on each device model, the samples behind each
        prediction, and the calls sent to each device with the reason."""
        if self.router.placer is None:
            return "no call was placed 'auto' by this backend"
        return self.router.placer.explain()

    def format_report(self, since=None):
        """The dispatch report, one line per device (a GPU worker that spent a tenth of
        its busy time or more not working, by its cost timer, says so); with ``since``
        (an earlier :meth:`report`), what was done after it."""
        return format_report(self.report(), since)

    def run_in_caller(self, kernel, args, kwargs):
        """One kernel call of a ``Parallel(n_jobs=1)`` call: routed, run in this thread,
        bound to its device for the call; its result moved to the host."""
        device, placed = self.router.route_one(kernel, args, kwargs)
        elapsed = guarded_timer(device.platform.start_cost_timer, device)
        try:
            return run_bound(device, kernel, args, kwargs, self.config.keep_on_device)
        finally:
            if placed is not None:  # a call placed by the cost model: its sample
                key = self.router.sample_key(device, [(kernel, args, kwargs)])
                sample(self.router, key, 1, elapsed(), hold=device.is_gpu)
                self.router.settle(placed)

    def _cpu_n_jobs(self, n_jobs):
        """CPU workers for a call's ``n_jobs`` (or the backend's ``n_cpu_jobs``)."""
        n_cpu_jobs = self.config.n_cpu_jobs
        return cpu_n_jobs(n_cpu_jobs if n_cpu_jobs is not None else n_jobs)

    def _in_caller(self, n_jobs):
        """Whether a call's ``n_jobs`` asks joblib to run the calls in the caller's
        thread (1, or None with no ``parallel_config`` setting more)."""
        return n_jobs in (None, 1) and self.config.n_cpu_jobs in (None, 1)


def _reroute(backend_ref, device_id, error, batch, items):
    """The calls ``items`` of ``batch``, whose GPU was lost, routed again over the
    devices left: the Future of their results (its error when none is left)."""
    backend = backend_ref()
    if backend is None:
        raise error
    backend.router.lose(device_id, error)
    return backend._dispatch(batch, items, None, watch=False)
