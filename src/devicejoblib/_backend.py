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

from ._assemble import cluster_parts, cpu_pools, local_parts, sample
from ._config import OWN_PARAMETERS, BackendConfig
from ._joblib_adapters import (
    ParallelBackendBase,
    active_backend,
    cpu_n_jobs,
    make_loky,
    sub_batch,
)
from ._utils import guarded_timer
from .observe.bookkeeping import after
from .observe.progress import Progress
from .observe.report import call_report, format_report, with_placements
from .observe.trace import Trace, watched
from .policy.batching import BatchPolicy
from .policy.model_store import learnt_launch_size, remember_launch_sizes
from .policy.routing import CPU_PROCESSES, CPU_THREADS
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
    """joblib backend that sends each call to the CPU or to a GPU's worker thread.

    Parameters
    ----------
    devices : device spec, optional
        The devices to use (see :func:`devicejoblib.parse_devices`); default: all.
    placement : device spec or "auto", optional
        Where calls may run unless a kernel is pinned with ``.on()``: ``"gpu"``,
        ``"cpu"``, a device list, among ``devices``; ``"auto"``: each kernel call goes
        where the learnt cost model expects it to finish first (``kernel.on("auto")``
        asks it for one kernel). Default: decided per call (affinity, capability).
    cpu_backend : {"loky", "threading"}
        How CPU calls run: loky worker processes (default) or threads. ``nogil`` kernels,
        ``prefer="threads"`` and ``require="sharedmem"`` always use threads.
    n_cpu_jobs : int, optional
        CPU workers; default: the ``n_jobs`` of the ``Parallel`` call.
    keep_on_device : bool
        Leave GPU results on their device (CuPy arrays) instead of copying them to NumPy.
    max_batch_size : int, optional
        Upper bound for automatic batch sizes, on the CPU and on each GPU.
    client : distributed.Client or "default", optional
        Run the calls on this Dask cluster instead ("default": the current default
        client): each routed part of a batch is one Dask task, GPU parts on workers that
        declare a ``GPU`` resource (see the "Scaling out" page).
    retries : int
        With ``client``: Dask's ``retries`` of a part whose call raised (default 0: the
        error is the ``Parallel`` call's at once). Parts of a worker that died are run
        again by Dask whatever this says.
    wait_for_workers_timeout : float
        With ``client``: seconds to wait for a first worker, and for a GPU worker while
        GPU parts wait for one (then they fail), as joblib's dask backend's.
    trace : str or path, optional
        Write a timeline of the run there: Chrome trace-event JSON, which Perfetto and
        chrome://tracing open (rewritten at the end of each ``Parallel`` call).
    progress : bool
        Show a progress bar of the calls done, per device (tqdm on a terminal, plain
        text lines otherwise).
    """

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
        self._claim = _Claim()  # the Parallel call this backend serves, until terminate()
        if config.on_cluster:
            # a Parallel call without n_jobs uses the cluster, as joblib's dask backend
            self.default_n_jobs, self.supports_sharedmem = -1, False
            self.cluster, self.router, self.gpus = cluster_parts(config, self.batching)
        else:
            self.cluster = None
            self.router, self.gpus = local_parts(
                config, self.batching, self._trace,
                reroute=functools.partial(_reroute, weakref.ref(self)))
        self.cpu = cpu_pools(self.router, self.batching, sampled=self.cluster is None)
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
    def parallel(self):
        """The ``Parallel`` call this backend serves, between configure() and
        terminate()."""
        return self._call.parallel

    def __getattr__(self, name):
        # the constructor's arguments, validated, as the backend's config holds them
        config = self.__dict__.get("config")
        if config is not None and name in OWN_PARAMETERS:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
        self._claim.take(parallel)  # one call at a time: two would share a call's state
        try:
            n_jobs = self._configure(n_jobs, parallel, prefer, require, kwargs)
        except BaseException:
            self._claim.release()
            raise
        if n_jobs == 1:  # joblib runs the calls itself, and will not terminate()
            self._claim.release()
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
            self._claim.release()  # the next Parallel call may use this backend

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
        if self.gpus.abandoned_any:  # (only an abort can leave a call that never returns)
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
        if len(parts) == 1 and items is batch.items:
            target = next(iter(parts))
            if watch:
                self.batching.gpu_bound = target.is_gpu
            return self._submit_part(target, batch, callback, ledger, watch=watch)
        if watch:
            self.batching.gpu_bound = all(target.is_gpu for target in parts)
        joined = JoinedBatch(len(items), len(parts), callback)
        for target, positions in parts.items():
            positions = range(len(items)) if positions is None else positions
            part_done = functools.partial(joined.part_done, positions)
            try:
                part = sub_batch(batch, [items[i] for i in positions])
            except BaseException as exc:
                self._failed(exc, part_done)
                continue
            self._submit_part(target, part, part_done, ledger, len(items), watch)
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
        batching = self.batching
        if (target.is_gpu and batching.gpu_bound and batching.fixed is None
                and self.cluster is None):  # (joblib's batch size, learnt when "auto")
            callback = batching.dispatch.timing(len(batch), callback)
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
        placer = self.router.placer
        if placer is not None:  # (what the model placed: on a GPU, else the CPU route)
            with_placements(out, placer.calls_per_device(),
                            lambda d: d if d in self.gpus.workers else self.router.cpu_route)
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


class _Claim:
    """Which ``Parallel`` call a backend serves: a second call while one holds it (from
    another thread) is an error that names the fix."""

    def __init__(self):
        self._lock = threading.Lock()
        self.parallel = None

    def take(self, parallel):
        with self._lock:
            if self.parallel is not None and self.parallel is not parallel:
                raise RuntimeError(
                    "Invalid use of a DeviceBackend by two Parallel calls at once (it "
                    "serves one call at a time, as joblib's own backends do): give each "
                    "thread its own DeviceBackend, or parallel_config(backend='device') "
                    "in each")
            self.parallel = parallel

    def release(self):
        self.parallel = None


def _reroute(backend_ref, device_id, error, batch, items):
    """The calls ``items`` of ``batch``, whose GPU was lost, routed again over the
    devices left: the Future of their results (its error when none is left)."""
    backend = backend_ref()
    if backend is None:
        raise error
    backend.router.lose(device_id, error)
    return backend._dispatch(batch, items, None, watch=False)
