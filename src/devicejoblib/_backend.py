"""The joblib backend ``"device"``: routes each call of a batch to CPU workers (loky
processes, or threads) or to the worker thread of a GPU, and joins the parts so that
joblib sees one batch, one callback, results in order."""

from __future__ import annotations

import collections
import contextlib
import difflib
import functools
import os
import threading
import time
import weakref
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

from . import _context
from ._batching import BatchPolicy
from ._cluster import GPU_PART
from ._context import bind_thread
from ._devices import parse_devices
from ._errors import DeviceUnavailableError
from ._execution import FusedCPUBatch, GPUTask, JoinedBatch, TimedBatch, execute_gpu, failed
from ._fusion import add_note, describe, has_batched_form, to_host
from ._joblib_adapters import (
    FallbackToBackend,
    ParallelBackendBase,
    active_backend,
    cpu_n_jobs,
    known_total,
    make_loky,
    sequential_backend,
    sub_batch,
)
from ._kernels import ResidentHold
from ._model_store import learnt_launch_size, remember_launch_sizes
from ._placement import auto_kernel, hold_first, is_auto, release_held
from ._platforms import HOST
from ._progress import Progress
from ._routing import CPU_PROCESSES, CPU_THREADS, Router, route_of
from ._trace import Trace, describe_part
from ._utils import check_count, check_flag, check_n_jobs, guarded_timer, warn_once
from ._workers import CallbackThread, GPUWorker

CPU_BACKENDS = ("loky", "threading")


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
        if cpu_backend not in CPU_BACKENDS:
            raise ValueError(f"Invalid cpu_backend={cpu_backend!r}: expected one of "
                             f"{', '.join(map(repr, CPU_BACKENDS))}")
        check_n_jobs("n_cpu_jobs", n_cpu_jobs)
        _refuse_misspelt(backend_kwargs)
        self.cpu_backend = cpu_backend
        self.n_cpu_jobs = n_cpu_jobs
        self.keep_on_device = check_flag("keep_on_device", keep_on_device)
        self.progress = check_flag("progress", progress)
        self._progress = None  # the current call's bar
        if trace is not None and not isinstance(trace, (str, os.PathLike)):
            raise TypeError(f"Invalid trace={trace!r}: expected a file path or None")
        self._trace = Trace(trace) if trace is not None else None
        self.batching = BatchPolicy(max_batch_size, nesting_level)
        self.workers = workers = {}
        self.cluster = None
        if client is not None:
            self.cluster = self._on_cluster(client, devices, placement, retries,
                                            wait_for_workers_timeout)
            self.router = self.cluster.router
        else:
            if retries != 0:
                raise ValueError(f"Invalid retries={retries!r} without client=: retries "
                                 "apply to the parts a Dask cluster runs")
            # the load reads the workers, not the backend: no cycle may delay its finalizer
            self.router = Router(parse_devices(devices), placement,
                                 load=lambda device_id: workers[device_id].load())
        # GPU workers per platform: the ones that compute on the host share its cores
        self._per_platform = collections.Counter(d.platform for d in self.router.gpus)
        for device in self.router.gpus:
            sizer = self.batching.launch_sizer(device)
            execute = functools.partial(execute_gpu, device, self.keep_on_device, sizer,
                                        cpu_fallback=self.router.cpu_allowed)
            self.workers[device.id] = GPUWorker(
                device, execute, sizer, self._per_platform[device.platform],
                rescue=functools.partial(_rescue, weakref.ref(self), device.id),
                observe=functools.partial(_observed, self.router, self._trace, device),
                on_exit=functools.partial(_thread_ends, self.router))
        self.batching.learnt = learnt_launch_size
        self._host_limits = contextlib.ExitStack()
        self._cpu = {}  # CPU route -> (submit, shutdown, abort)
        self._cpu_stats = {CPU_PROCESSES: [0, 0, 0.0], CPU_THREADS: [0, 0, 0.0]}
        self._stats_lock = threading.Lock()
        self._cpu_last_done = {}  # CPU route -> when its last timed batch was done
        self._abandoned_any = False  # whether an abort left a GPU call running
        self._cpu_jobs = 1
        self._callbacks = CallbackThread("devicejoblib-callbacks")
        self._accepting = True  # False once shut down, until the next configure()
        self._aborted = False
        self._before = None  # (report, auto decisions) as a verbose call started
        self._serving = threading.Lock()  # held while configure() claims the backend
        self._claimed_by = None  # the Parallel this backend serves, until terminate()
        self._resident = ResidentHold(set(self.workers))
        self._finalizer = weakref.finalize(
            self, _release, [*self.workers.values(), self._callbacks], self._resident,
            self.cluster and self.cluster.close)

    @property
    def max_batch_size(self):
        """Upper bound for automatic batch sizes (held by the batch policy)."""
        return self.batching.max_batch_size

    @property
    def uses_threads(self):
        return self.cpu_backend == "threading"

    # --- joblib's contract -----------------------------------------------------------

    def _on_cluster(self, client, devices, placement, retries, wait):
        from ._cluster import Cluster, resolve_client

        if devices is not None:
            raise ValueError(f"Invalid devices={devices!r} with client=: a Dask cluster's "
                             "devices are its workers'; use placement= to choose kinds")
        for name, value, default in (("cpu_backend", self.cpu_backend, "loky"),
                                     ("n_cpu_jobs", self.n_cpu_jobs, None)):
            if value != default:
                raise ValueError(f"Invalid {name}={value!r} with client=: CPU calls run on "
                                 "the cluster's workers, one per worker thread")
        if self.keep_on_device:
            raise ValueError("Invalid keep_on_device=True with client=: results of a Dask "
                             "cluster come back to this process as host arrays")
        if is_auto(placement):
            raise ValueError("Invalid placement='auto' with client=: learned placement "
                             "runs on one machine only for now; on a cluster, calls are "
                             "placed by kind ('gpu', 'cpu') and capability")
        retries = check_count("retries", retries, minimum=0)
        # a Parallel call without n_jobs uses the cluster, as joblib's dask backend does
        self.default_n_jobs = -1
        self.supports_sharedmem = False  # joblib then runs sharedmem calls on threads
        if not (isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait >= 0):
            raise ValueError(f"Invalid wait_for_workers_timeout={wait!r}: expected seconds, "
                             "a number >= 0")
        return Cluster(resolve_client(client), placement, self.batching, retries, wait)

    def effective_n_jobs(self, n_jobs):
        # joblib slices the input into this many batches per round and keeps twice as
        # many in flight. max(), not the sum, keeps CPU batches as loky's would be (the
        # sum cost 10% per CPU call, bench_dispatch.py); with a GPU never 1 (joblib would
        # bypass the backend) unless the call asks for one job: it then runs in the
        # caller, the kernels it calls routed by run_in_caller.
        if self.cluster is not None:
            return self.cluster.n_jobs()
        cpu = self._cpu_n_jobs(n_jobs)
        if not self.workers or self._in_caller(n_jobs):
            return cpu
        return max(cpu, len(self.workers), 2)

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **kwargs):
        given = [name for name in _OWN_PARAMETERS if name in kwargs]
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

    def _configure(self, n_jobs, parallel, prefer, require, kwargs):
        self._accepting = True
        self._resident.acquire()
        self._cpu_jobs = self._cpu_n_jobs(n_jobs)
        self.router.cpu_slots = self._cpu_jobs
        self.router.configure(self.cpu_backend, prefer, require)
        if self.cluster is not None:
            self.cluster.refresh()
        elif self.workers and self._in_caller(n_jobs):
            # joblib runs the calls in this thread, one by one, and never terminates the
            # backend after: keep nothing of the call. The kernels its loop calls still
            # go where routing sends them (run_in_caller), in this thread, so that a
            # debugger can step into GPU code.
            return 1
        self.parallel = parallel
        self._loky_kwargs = kwargs
        if self.progress:
            self._progress = Progress()
        self.batching.start_call(parallel)
        self._limit_host_threads()
        return self.effective_n_jobs(n_jobs)

    def start_call(self):
        self._aborted = False  # a managed Parallel may call again after an error
        if self.parallel is not None and self.parallel.verbose:  # the report is per call
            placer = self.router.placer
            self._before = (self.report(), None if placer is None else placer.decisions_now())

    def compute_batch_size(self):
        return self.batching.compute_batch_size()

    def batch_completed(self, batch_size, duration):
        """Ignored: CPU parts report their own durations; GPU workers time themselves."""

    def submit(self, func, callback=None):
        # joblib calls submit from the callback thread too, where a raised error would
        # be lost and the batch never completed: errors become the batch's outcome.
        if self._aborted:  # a batch dispatched while the call aborts: start nothing
            return self._failed(CancelledError("the Parallel call was aborted"), callback)
        self._check_stuck()
        ledger = {}  # target -> what a part placed "auto" queued on its device
        try:
            groups = self.router.split(func.items, ledger)
        except BaseException as exc:
            return self._failed(exc, callback)
        self.batching.gpu_bound = all(route_of(target) in self.workers or target == GPU_PART
                                      for target in groups)
        if len(groups) == 1:
            (target, _), = groups.items()
            callback = self._settling(callback, target, ledger)
            try:
                return self._submit_part(target, func, callback)
            except BaseException as exc:
                return self._failed(exc, callback)
        joined = JoinedBatch(len(func.items), len(groups), callback)
        self._submit_parts(func, func.items, groups, joined, ledger)
        return joined

    def retrieve_result_callback(self, out):
        return out.result()

    def abort_everything(self, ensure_ready=True):
        self._aborted = True
        if self.cluster is not None:
            self.cluster.abort()
        # a call still running this long after a timeout never returns: device lost
        patience = getattr(self.parallel, "timeout", None)
        for worker in self.workers.values():
            worker.cancel_pending()
            worker.abandon_running(patience)
        self._abandoned_any = bool(self.workers)
        # joblib's callback thread may still submit meanwhile: detach, then abort
        executors, self._cpu = self._cpu, {}
        for _, _, abort in executors.values():
            abort()

    def stop_call(self):
        if self.parallel is not None and self.parallel.verbose:
            report, placed = self._before or ({}, None)
            lines = self.format_report(since=report).splitlines()
            placer = self.router.placer
            explained = "" if placer is None else placer.explain(
                since=placed or collections.Counter())
            if explained:
                lines += ["placed 'auto' in this call:", *explained.splitlines()]
            for line in lines:
                self.parallel._print(line)

    def terminate(self):
        try:
            self._terminate()
        finally:
            self._claimed_by = None  # the next Parallel call may use this backend

    def _terminate(self):
        executors, self._cpu = self._cpu, {}
        for _, shutdown, _ in executors.values():
            shutdown()
        self._host_limits.close()
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if self._trace is not None:
            self._trace.write()
        self.batching.end_call()
        # Break the backend <-> Parallel cycle so that, once the caller drops both, the
        # backend is freed at once and its finalizer joins the GPU threads.
        self.parallel = None
        # Inside `parallel_config(backend=...)` the same backend serves the next Parallel
        # call: keep its GPU threads; they stop when the backend is collected or shut down.
        if active_backend() is not self:
            # after an error or a timeout, do not wait for the GPU calls still running:
            # their threads exit when those calls return. A cluster's runners stay, with
            # what they learnt, until the backend is collected or shut down.
            self._stop(wait=not self._aborted)
        self._aborted = False
        # (after the threads stopped: what they held back for the model is saved too)
        remember_launch_sizes(self.batching.launch_sizers.values())

    # --- devicejoblib's own -------------------------------------------------------------

    def shutdown(self, wait=True):
        """Stop the GPU worker threads (they restart on the next call) — and wait for
        them unless ``wait=False`` — and let go of the kernels' resident state on the
        GPUs (released once no backend holds those GPUs); on a cluster, of this backend's
        runners on its workers (their threads, launch sizes and resident state)."""
        self._stop(wait)
        if self.cluster is not None:
            self.cluster.close()
        remember_launch_sizes(self.batching.launch_sizers.values())

    def _stop(self, wait):
        self._accepting = False
        _stop_all([*self.workers.values(), self._callbacks], wait)
        self._resident.release()

    def report(self):
        """Calls, batches and seconds per device since this backend was made.

        GPU seconds are the worker's busy time, and ``working_seconds`` the part of it
        its platform's cost timer counts (on a real GPU the thread's CPU time, waits
        for the GPU included): the rest the thread was not running, waiting for the
        GIL, a core or I/O. CPU seconds are from submission to result (they include
        queueing and transfer to worker processes).
        """
        self._check_stuck()
        out = {}
        for route, (calls, batches, seconds) in self._cpu_stats.items():
            if calls:
                out[route] = {"calls": calls, "batches": batches, "seconds": seconds}
        for device_id, worker in self.workers.items():
            if worker.calls:
                out[device_id] = {"calls": worker.calls, "batches": worker.batches,
                                  "seconds": worker.busy_seconds,
                                  "working_seconds": worker.working_seconds,
                                  **worker.sizer.describe()}
            if worker.lost is not None:
                out.setdefault(device_id, {"calls": 0, "batches": 0, "seconds": 0.0})
                out[device_id]["lost"] = str(worker.lost)
        if self.cluster is not None:
            out.update(self.cluster.report())
        if self.router.placer is not None:
            for device_id, placed in self.router.placer.calls_per_device().items():
                row = out.setdefault(device_id if device_id in self.workers else
                                     self.router.cpu_route, {"calls": 0, "batches": 0,
                                                             "seconds": 0.0})
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
        lines = []
        for device, r in self.report().items():
            if since is not None:
                r = _minus(r, since.get(device, {}))
                if not r["calls"] and "lost" not in r:
                    continue
            lines.append(
                f"{device}: {r['calls']} calls in {r['batches']} batches, {r['seconds']:.3f}s"
                + (f", batch size {r['batch_size']} ({r['batch_policy']})"
                   if "batch_size" in r else "") + _waited(r))
        return "\n".join(lines)

    # --- internals ----------------------------------------------------------------------

    def _cpu_n_jobs(self, n_jobs):
        """CPU workers for a call's ``n_jobs`` (or the backend's ``n_cpu_jobs``)."""
        return cpu_n_jobs(self.n_cpu_jobs if self.n_cpu_jobs is not None else n_jobs)

    def _in_caller(self, n_jobs):
        """Whether a call's ``n_jobs`` asks joblib to run the calls in the caller's
        thread (1, or None with no ``parallel_config`` setting more)."""
        return n_jobs in (None, 1) and self.n_cpu_jobs in (None, 1)

    def run_in_caller(self, kernel, args, kwargs):
        """One kernel call of a ``Parallel(n_jobs=1)`` call: routed, run in this thread,
        bound to its device for the call; its result moved to the host."""
        device, placed = self.router.route_one(kernel, args, kwargs)
        elapsed = guarded_timer(device.platform.start_cost_timer, device)
        try:
            return self._run_here(device, kernel, args, kwargs)
        finally:
            if placed is not None:  # a call placed by the cost model: its sample
                _sample(self.router, self.router.sample_key(device, [(kernel, args, kwargs)]),
                        1, elapsed(), hold=device.is_gpu)
                self.router.settle(placed)

    def _run_here(self, device, kernel, args, kwargs):
        if not device.is_gpu:
            return kernel.run_on(None, args, kwargs)
        with device.platform.bound(device) as sync:
            previous = bind_thread(device)
            try:
                device.platform.simulate_launch(device, (*args, *kwargs.values()))
                result = kernel.run_on(device, args, kwargs)
                sync()
                return to_host(result, device, self.keep_on_device)
            except Exception as exc:
                add_note(exc, f"raised by {describe(kernel, args, kwargs)} on {device}")
                raise
            finally:
                bind_thread(previous)

    def run_on_a_gpu(self, batch):
        """Run every call of a joblib ``batch`` on the least loaded GPU of this backend
        and wait: ``(results, device id)`` (a cluster's GPU part, on its worker)."""
        live = [w for w in self.workers.values() if w.device.id not in self.router.lost]
        if not live:
            why = "; ".join(map(str, self.router.lost.values())) or "this process has none"
            raise DeviceUnavailableError(f"no GPU left to run on: {why}")
        worker = min(live, key=GPUWorker.load)
        results = self._submit_gpu(worker, batch, None).result()
        return results, worker.device.id

    def _check_stuck(self):
        """Route no more calls to a GPU whose call outlived a timeout as long again."""
        if not self._abandoned_any:
            return  # (the common case, checked for every batch)
        for device_id, worker in self.workers.items():
            if device_id not in self.router.lost:
                error = worker.check_stuck()
                if error is not None:
                    self.router.lose(device_id, error)

    def _resubmit(self, batch, future, on_done, done):
        """Route the calls of ``batch`` after the ``done`` ones again and complete
        ``future`` (already running) with all the results."""
        items, ledger = batch.items[len(done):], {}
        groups = self.router.split(items, ledger)

        def forward(joined):
            try:
                future.set_result(done + joined.result())
            except BaseException as exc:
                future.set_exception(exc)
            if on_done is not None:
                on_done(future)

        # (the batch's calls were counted once already, by the progress bar)
        self._submit_parts(batch, items, groups, JoinedBatch(len(items), len(groups), forward),
                           ledger, watch=False)

    def _submit_parts(self, batch, items, groups, joined, ledger=None, watch=True):
        """Submit the calls ``items`` of ``batch`` in the parts ``groups`` (target ->
        positions, None: all) routing made, each part reporting to ``joined``."""
        for target, positions in groups.items():
            positions = range(len(items)) if positions is None else positions
            part_done = self._settling(functools.partial(joined.part_done, positions),
                                       target, ledger)
            try:
                self._submit_part(target, sub_batch(batch, [items[i] for i in positions]),
                                  part_done, whole=len(items), watch=watch)
            except BaseException as exc:
                self._failed(exc, part_done)

    def _cpu_service(self, route, started, seconds):
        """The seconds a CPU batch (``seconds`` in its worker) cost its route, as the
        cost model learns it: a worker's time per batch at the route's throughput —
        its workers over the time between two batches done — which counts copying
        arguments and results to worker processes and the caller's share of it; at
        most the batch's round trip, at least the worker's own time. Threads copy
        nothing: their own time."""
        if route != CPU_PROCESSES:
            return seconds
        now = time.perf_counter()
        with self._stats_lock:
            previous, self._cpu_last_done[route] = self._cpu_last_done.get(route), now
        service = now - started
        if previous is not None:
            service = min(service, self._cpu_jobs * (now - previous))
        return max(service, seconds)

    def _watched(self, target, batch, callback):
        """``callback``, preceded by counting the part's calls in the progress bar and,
        for CPU parts, a slice in the trace (GPU workers trace their own groups)."""
        route, n_calls, start = route_of(target), len(batch), time.perf_counter()
        progress, trace, parallel = self._progress, self._trace, self.parallel
        items = batch.items if trace is not None and route not in self.workers else None

        placed = "auto" if type(target) is tuple else "rule"

        def watch(future):
            if items is not None and not future.exception():
                name, args = describe_part(items)
                end = time.perf_counter()
                # the worker's own time where it was measured, else from submission
                seconds = getattr(future, "worker_seconds", None) or end - start
                trace.slice(_CPU_TRACKS.get(route, route), name, end - seconds, seconds,
                            placed=placed, **args)
            if progress is not None:
                progress.update(n_calls, route, known_total(parallel))

        return _after(watch, callback, "the trace or progress bar")

    def _settling(self, callback, target, ledger):
        """``callback``, preceded by settling what the part for ``target`` queued in the
        cost model's view (when calls of it were placed "auto")."""
        entry = ledger.pop(target, None) if ledger else None
        if entry is None:
            return callback
        router = self.router
        return _after(lambda _: router.settle(entry), callback, "the placement model")

    def _limit_host_threads(self):
        """For the coming call, limit native thread pools while GPU workers compute on
        the host (simulated GPUs): each gets its share of the cores."""
        self._host_limits.close()
        for platform, n_workers in self._per_platform.items():
            self._host_limits.enter_context(platform.thread_limits(n_workers))

    def _failed(self, error, callback):
        """A Future that raises ``error``, its callback fired on the callback thread."""
        future = failed(error)
        if callback is not None:
            self._callbacks.call(callback, future)
        return future

    def _submit_part(self, target, batch, callback, whole=None, watch=True):
        """Submit the part ``batch`` (of a joblib batch of ``whole`` calls) to
        ``target``'s workers; its Future."""
        if watch and (self._progress is not None or self._trace is not None):
            callback = self._watched(target, batch, callback)
        if self.cluster is not None:
            return self.cluster.submit(target, batch, callback, whole)
        target = route_of(target)
        worker = self.workers.get(target)
        if worker is not None:
            return self._submit_gpu(worker, batch, callback)
        submit = self._cpu_executor(target)[0]
        started, n_calls = time.perf_counter(), len(batch)
        stats = self._cpu_stats[target]

        def cpu_done(future):
            seconds = time.perf_counter() - started
            with self._stats_lock:
                stats[0] += n_calls
                stats[1] += 1
                stats[2] += seconds
            self.batching.cpu_batch_completed(n_calls, seconds, whole)
            if callback is not None:
                callback(future)

        items = batch.items
        if has_batched_form(items, HOST.runs):
            batch = FusedCPUBatch(batch)
        if self.router.placer is None:
            future = submit(batch)
            future.add_done_callback(cpu_done)
            return future
        # measured in the worker, for the cost model: (results, seconds) come back
        timed, future = submit(TimedBatch(batch)), Future()
        future.set_running_or_notify_cancel()

        def unwrap(done):
            try:
                results, seconds = done.result()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                try:
                    self.router.observe(self.router.cpu, items, n_calls,
                                        self._cpu_service(target, started, seconds))
                except Exception as exc:  # never at the cost of the results
                    _report_lost_bookkeeping("the placement model", exc)
                future.worker_seconds = seconds
                future.set_result(results)
            cpu_done(future)

        timed.add_done_callback(unwrap)
        return future

    def _submit_gpu(self, worker, batch, callback):
        started, whole, gpu_bound = time.perf_counter(), len(batch), self.batching.gpu_bound

        def done(future):
            if gpu_bound:  # (after a failure the call ends and the sizer is reset)
                self.batching.dispatch.completed(whole, time.perf_counter() - started)
            if callback is None:
                return
            if self._accepting:
                self._callbacks.call(callback, future)
            else:  # a call that outlived an abort: no callback thread to start again
                callback(future)

        return worker.submit(GPUTask(batch, worker.device), done)

    def _cpu_executor(self, route):
        if route not in self._cpu:
            self._cpu[route] = (self._make_loky() if route == CPU_PROCESSES
                                and self._cpu_jobs > 1 else self._make_threads(route))
        return self._cpu[route]

    def _make_loky(self):
        try:
            return make_loky(self.parallel, self._cpu_jobs, self.nesting_level,
                             self.inner_max_num_threads, **self._loky_kwargs)
        except FallbackToBackend:  # e.g. below a thread or in a daemon process
            return self._make_threads(CPU_PROCESSES, n_threads=1)

    def _make_threads(self, route, n_threads=None):
        n_threads = n_threads or self._cpu_jobs
        limits = HOST.thread_limits(n_threads)
        limits.__enter__()  # held while the pool lives: its threads compute on the host
        pool = ThreadPoolExecutor(n_threads, thread_name_prefix=f"devicejoblib-{route}",
                                  initializer=HOST.limit_thread,
                                  initargs=(n_threads,))

        def shutdown(cancel_futures=False):
            pool.shutdown(cancel_futures=cancel_futures)
            limits.__exit__(None, None, None)

        return pool.submit, shutdown, functools.partial(shutdown, cancel_futures=True)


_OWN_PARAMETERS = ("devices", "placement", "cpu_backend", "n_cpu_jobs", "keep_on_device",
                   "max_batch_size", "client", "retries", "wait_for_workers_timeout", "trace",
                   "progress")


def _refuse_misspelt(backend_kwargs):
    """A keyword close to one of the backend's own is a typo, not an option for loky
    (where the others go)."""
    for name in backend_kwargs:
        close = difflib.get_close_matches(name, _OWN_PARAMETERS, n=1, cutoff=0.75)
        if close:
            raise TypeError(f"Invalid argument {name}={backend_kwargs[name]!r} for the "
                            f"device backend: did you mean {close[0]}=? Its arguments are "
                            f"{', '.join(_OWN_PARAMETERS)}")


def _rescue(backend_ref, device_id, error, task, future, on_done, done=()):
    """A task whose device is lost: its calls that did not complete (``done`` holds the
    results of those that did) routed again over the devices left, its results handed to
    its future; the error when no device is left."""
    backend = backend_ref()
    try:
        if backend is None:
            raise error
        backend.router.lose(device_id, error)
        backend._resubmit(task.batch, future, on_done, list(done))
    except BaseException as exc:
        future.set_exception(exc)
        if on_done is not None:
            on_done(future)


_CPU_TRACKS = {CPU_PROCESSES: "cpu (processes)", CPU_THREADS: "cpu (threads)"}


_COUNTS = ("calls", "batches", "seconds", "working_seconds", "auto_calls",
           "calibrating_calls")


def _minus(row, before):
    """A report row with the counts of ``before`` (the same device's, earlier) taken off."""
    return {key: value - before.get(key, 0) if key in _COUNTS else value
            for key, value in row.items()}


def _waited(row):
    """", 35% of it not working (waits for the GIL, a core, I/O)" for a report row whose
    worker's cost timer left out a tenth of its busy time or more; else ""."""
    seconds, working = row.get("seconds"), row.get("working_seconds")
    if not seconds or working is None or working > 0.9 * seconds:
        return ""
    return f", {1 - working / seconds:.0%} of it not working (waits for the GIL, a core, I/O)"


def _observed(router, trace, device, calls, n_calls, seconds, cost):
    """A GPU worker's group of ``n_calls`` took ``seconds``: a slice in the trace; and
    ``cost`` seconds of the device's (``Platform.start_cost_timer``; None if it failed),
    a sample for the cost model (held back if it is the thread's first of its kind)."""
    if trace is None and router.placer is None:
        return
    try:
        if trace is not None:
            name, args = describe_part(calls)
            placed = "auto" if any(auto_kernel(f, router.auto) for f, _, _ in calls) \
                else "rule"
            if cost is not None:  # what of it the thread was working (its cost timer)
                args["working_ms"] = round(cost * 1e3, 3)
            trace.slice(str(device), name, time.perf_counter() - seconds, seconds,
                        placed=placed, **args)
        _sample(router, router.sample_key(device, calls), n_calls, cost)
    except Exception as exc:  # never at the cost of the results
        _report_lost_bookkeeping("the trace or the placement model", exc)


def _sample(router, key, n_calls, seconds, hold=True):
    """Record a sample of ``key`` (None: no model's) unless ``seconds`` is None (the
    platform's cost timer failed) or, with ``hold`` (a GPU's), it is this thread's
    first of ``key`` (held back)."""
    if key is None or seconds is None:
        return
    sample = hold_first(key, n_calls, seconds) if hold else (n_calls, seconds)
    if sample is not None:
        router.record(key, *sample)


def _thread_ends(router):
    """A GPU worker thread ends: its held first samples that no later one followed are
    samples after all."""
    try:
        for key, n_calls, seconds in release_held():
            router.record(key, n_calls, seconds)
    except Exception as exc:  # never at the cost of the results
        _report_lost_bookkeeping("the placement model", exc)


def _after(bookkeeping, callback, what):
    """``callback`` (may be None), preceded by ``bookkeeping(future)``, whose errors
    cost one warning naming ``what``, never the result nor the callback."""

    def wrapped(future):
        try:
            bookkeeping(future)
        except Exception as exc:
            _report_lost_bookkeeping(what, exc)
        finally:
            if callback is not None:
                callback(future)

    return wrapped


def _report_lost_bookkeeping(what, exc):
    """An error while keeping ``what`` up to date: one warning; the calls go on."""
    warn_once(f"devicejoblib could not update {what} ({type(exc).__name__}: {exc}); "
              "results are not affected", RuntimeWarning, key=("bookkeeping", what))


def _backend_calling(frame):
    backend = sequential_backend(frame)
    return backend if isinstance(backend, DeviceBackend) and backend.workers else None


_context.backend_calling = _backend_calling


def _release(threads, resident, close_cluster=None):
    # when the backend is collected, or at exit: a call that outlived an abort is not
    # waited for (it may never return); its daemon thread ends with it
    _stop_all(threads, abandoned=False)
    resident.release()
    if close_cluster is not None:
        close_cluster()


def _stop_all(workers, wait=True, abandoned=True):
    for worker in workers:
        worker.stop(wait, abandoned)
