"""The joblib backend ``"device"``: routes each call of a batch to CPU workers (loky
processes, or threads) or to the worker thread of a GPU, and joins the parts so that
joblib sees one batch, one callback, results in order."""

from __future__ import annotations

import functools
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

from joblib._parallel_backends import (
    FallbackToBackend,
    LokyBackend,
    ParallelBackendBase,
)
from joblib.parallel import get_active_backend

from ._arrays import device_array_types, holds_any
from ._batching import DispatchBatchSizer, GPUBatchSizer
from ._devices import parse_devices
from ._execution import FusedCPUBatch, GPUTask, JoinedBatch, Outcome, execute_gpu, sub_batch
from ._fusion import has_batched_form
from ._kernels import Kernel, ResidentHold
from ._routing import Router
from ._safe_import import cpu_count
from ._workers import CallbackThread, GPUWorker

CPU_BACKENDS = ("loky", "threading")
_PROCESS, _THREAD = "cpu", "cpu-threads"


class DeviceBackend(ParallelBackendBase):
    """joblib backend that sends each call to the CPU or to a GPU's worker thread.

    Parameters
    ----------
    devices : device spec, optional
        The devices to use (see :func:`devicejoblib.parse_devices`); default: all.
    placement : device spec, optional
        Where calls may run unless a kernel is pinned with ``.on()``: ``"gpu"``,
        ``"cpu"``, a device list. Default: decided per call (affinity, capability).
    cpu_backend : {"loky", "threading"}
        How CPU calls run: loky worker processes (default) or threads. ``nogil`` kernels,
        ``prefer="threads"`` and ``require="sharedmem"`` always use threads.
    n_cpu_jobs : int, optional
        CPU workers; default: the ``n_jobs`` of the ``Parallel`` call.
    keep_on_device : bool
        Leave GPU results on their device (CuPy arrays) instead of copying them to NumPy.
    max_batch_size : int, optional
        Upper bound for automatic batch sizes, on the CPU and on each GPU.
    """

    supports_retrieve_callback = True
    # GPU workers are threads of this process, and require="sharedmem" sends CPU calls
    # to threads too: every call then shares the caller's memory.
    supports_sharedmem = True
    default_n_jobs = 1

    def __init__(self, devices=None, placement=None, cpu_backend="loky", n_cpu_jobs=None,
                 keep_on_device=False, max_batch_size=None, nesting_level=None,
                 inner_max_num_threads=None, **backend_kwargs):
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **backend_kwargs)
        if cpu_backend not in CPU_BACKENDS:
            raise ValueError(f"Invalid cpu_backend={cpu_backend!r}: expected one of "
                             f"{', '.join(map(repr, CPU_BACKENDS))}")
        if n_cpu_jobs is not None and (not isinstance(n_cpu_jobs, int) or n_cpu_jobs == 0
                                       or isinstance(n_cpu_jobs, bool)):
            raise ValueError(f"Invalid n_cpu_jobs={n_cpu_jobs!r}: expected a non-zero "
                             "integer (-1 for all CPUs) or None")
        if max_batch_size is not None and (not isinstance(max_batch_size, int)
                                           or isinstance(max_batch_size, bool)
                                           or max_batch_size < 1):
            raise ValueError(f"Invalid max_batch_size={max_batch_size!r}: expected a "
                             "positive integer or None")
        self.cpu_backend = cpu_backend
        self.n_cpu_jobs = n_cpu_jobs
        self.keep_on_device = keep_on_device
        self.max_batch_size = max_batch_size
        self.router = Router(parse_devices(devices), placement)
        self.workers = {}
        for device in self.router.gpus:
            sizer = GPUBatchSizer(device, max_batch_size)
            execute = functools.partial(execute_gpu, device, keep_on_device, sizer)
            self.workers[device.id] = GPUWorker(device, execute, sizer, keep_on_device)
        self._gpu_bound = False  # whether the last batch went to GPUs only
        self._dispatch_sizer = DispatchBatchSizer(max_batch_size)
        self._cpu = {}  # executor kind -> (submit, shutdown, abort)
        self._cpu_stats = {_PROCESS: [0, 0, 0.0], _THREAD: [0, 0, 0.0]}
        self._stats_lock = threading.Lock()
        self._cpu_jobs = 1
        self._callbacks = CallbackThread("devicejoblib-callbacks")
        self._accepting = True  # False once shut down, until the next configure()
        self._aborted = False
        self._resident = ResidentHold(set(self.workers))
        self._finalizer = weakref.finalize(
            self, _release, [*self.workers.values(), self._callbacks], self._resident)

    @property
    def uses_threads(self):
        return self.cpu_backend == "threading"

    # --- joblib's contract -----------------------------------------------------------

    def effective_n_jobs(self, n_jobs):
        # joblib slices the input into this many batches per round and keeps twice as
        # many in flight. max(), not the sum, keeps CPU batches as loky's would be (the
        # sum cost 10% per CPU call, bench_dispatch.py); never 1 with a GPU, or joblib
        # would bypass the backend.
        cpu = self._resolve_cpu_jobs(n_jobs)
        return max(cpu, len(self.workers), 2) if self.workers else cpu

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **kwargs):
        self.parallel = parallel
        self._accepting = True
        self._resident.acquire()
        self._cpu_jobs = self._resolve_cpu_jobs(n_jobs)
        threads = self.cpu_backend == "threading" or prefer == "threads" or (
            require == "sharedmem")
        self._default_cpu = _THREAD if threads else _PROCESS
        self._loky_kwargs = kwargs
        self._cpu_batching.parallel = parallel
        fixed = getattr(parallel, "batch_size", "auto")
        for worker in self.workers.values():
            worker.sizer.fixed = fixed if isinstance(fixed, int) else None
        return self.effective_n_jobs(n_jobs)

    def compute_batch_size(self):
        """joblib's batch size: the GPUs' while the calls go to GPUs, else joblib's auto
        policy for loky (fed with the CPU parts' durations only)."""
        if self._gpu_bound:
            return self._dispatch_sizer.compute(
                min(worker.sizer.size for worker in self.workers.values()))
        size = self._cpu_batching.compute_batch_size()
        return size if self.max_batch_size is None else min(size, self.max_batch_size)

    def batch_completed(self, batch_size, duration):
        """Ignored: CPU parts report their own durations; GPU workers time themselves."""

    def submit(self, func, callback=None):
        # joblib calls submit from the callback thread too, where a raised error would
        # be lost and the batch never completed: errors become the batch's outcome.
        try:
            groups = self._route(func.items)
        except BaseException as exc:
            return self._failed(exc, callback)
        self._gpu_bound = all(target in self.workers for target in groups)
        if len(groups) == 1:
            (target, _), = groups.items()
            try:
                return self._submit_part(target, func, callback)
            except BaseException as exc:
                return self._failed(exc, callback)
        joined = JoinedBatch(len(func.items), len(groups), callback)
        for target, positions in groups.items():
            done = joined.part_done(positions)
            try:
                self._submit_part(target, sub_batch(func, [func.items[i] for i in positions]),
                                  done)
            except BaseException as exc:
                self._failed(exc, done)
        return joined

    def retrieve_result_callback(self, out):
        return out.result()

    def abort_everything(self, ensure_ready=True):
        self._aborted = True
        for worker in self.workers.values():
            worker.cancel_pending()
        for _, _, abort in self._cpu.values():
            abort()
        self._cpu.clear()

    def stop_call(self):
        if self.parallel is not None and self.parallel.verbose:
            for line in self.format_report().splitlines():
                self.parallel._print(line)

    def terminate(self):
        for _, shutdown, _ in self._cpu.values():
            shutdown()
        self._cpu.clear()
        self._cpu_batching.reset_batch_stats()
        # GPU sizers keep what they learnt: the next call inside parallel_config starts
        # from it, and report() still shows it after this call.
        self._dispatch_sizer.reset()
        self._gpu_bound = False
        # Break the backend <-> Parallel cycle so that, once the caller drops both, the
        # backend is freed at once and its finalizer joins the GPU threads.
        self.parallel = self._cpu_batching.parallel = None
        # Inside `parallel_config(backend=...)` the same backend serves the next Parallel
        # call: keep its GPU threads; they stop when the backend is collected or shut down.
        if get_active_backend()[0] is not self:
            # after an error or a timeout, do not wait for the GPU calls still running:
            # their threads exit when those calls return
            self.shutdown(wait=not self._aborted)
        self._aborted = False

    # --- devicejoblib's own -------------------------------------------------------------

    def shutdown(self, wait=True):
        """Stop the GPU worker threads (they restart on the next call) — and wait for
        them unless ``wait=False`` — and let go of the kernels' resident state on the
        GPUs (released once no backend holds those GPUs)."""
        self._accepting = False
        _stop_all([*self.workers.values(), self._callbacks], wait)
        self._resident.release()

    def report(self):
        """Calls, batches and seconds per device since this backend was made.

        GPU seconds are the worker's busy time; CPU seconds are from submission to
        result (they include queueing and transfer to worker processes).
        """
        out = {}
        for kind, (calls, batches, seconds) in self._cpu_stats.items():
            if calls:
                out[kind] = {"calls": calls, "batches": batches, "seconds": seconds}
        for device_id, worker in self.workers.items():
            if worker.calls:
                out[device_id] = {"calls": worker.calls, "batches": worker.batches,
                                  "seconds": worker.busy_seconds, **worker.sizer.describe()}
        return out

    def format_report(self):
        """The dispatch report, one line per device."""
        return "\n".join(
            f"{device}: {r['calls']} calls in {r['batches']} batches, {r['seconds']:.3f}s"
            + (f", batch size {r['batch_size']} ({r['batch_policy']})"
               if "batch_size" in r else "")
            for device, r in self.report().items())

    # --- internals ----------------------------------------------------------------------

    @property
    def _cpu_batching(self):
        """The backend whose auto batching policy joblib's batch size follows."""
        if getattr(self, "_batcher", None) is None:
            self._batcher = LokyBackend(nesting_level=self.nesting_level)
        return self._batcher

    def _resolve_cpu_jobs(self, n_jobs):
        n = self.n_cpu_jobs if self.n_cpu_jobs is not None else n_jobs
        if n is None:
            return 1
        if n == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        return max(cpu_count() + 1 + n, 1) if n < 0 else n

    def _route(self, items):
        """Positions of the calls per target: a GPU id, or a CPU executor kind.

        A call without device-array arguments routes by its function alone, so a batch
        makes one decision per distinct function (and its calls stay together). The
        common batch, one function and no device arrays, maps to ``{target: None}``.
        """
        array_types = device_array_types() if self.workers else ()
        if not array_types:
            functions = {id(f): f for f, _, _ in items}
            if len(functions) == 1:
                return {self._target(next(iter(functions.values())), (), {}): None}
        groups, by_function = {}, {}
        for position, (function, args, kwargs) in enumerate(items):
            if array_types and holds_any(array_types, args, kwargs):
                target = self._target(function, args, kwargs)  # data affinity applies
            else:
                target = by_function.get(id(function))
                if target is None:
                    target = by_function[id(function)] = self._target(function, (), {})
            groups.setdefault(target, []).append(position)
        return groups

    def _target(self, function, args, kwargs):
        device = self.router.route(function, args, kwargs, self._load)
        if device.is_gpu:
            return device.id
        if type(function) is Kernel and function.nogil:
            return _THREAD
        return self._default_cpu

    def _failed(self, error, callback):
        """An outcome that raises ``error``, its callback fired on the callback thread."""
        outcome = Outcome()
        outcome.error = error
        if callback is not None:
            self._callbacks.call(callback, outcome)
        return outcome

    def _load(self, device_id):
        return self.workers[device_id].pending_calls

    def _submit_part(self, target, batch, callback):
        worker = self.workers.get(target)
        if worker is not None:
            outcome = Outcome()
            started, whole, gpu_bound = time.perf_counter(), len(batch), self._gpu_bound

            def done(result, error):
                outcome.value, outcome.error = result, error
                if gpu_bound and error is None:
                    self._dispatch_sizer.completed(whole, time.perf_counter() - started)
                if callback is None:
                    return
                if self._accepting:
                    self._callbacks.call(callback, outcome)
                else:  # a call that outlived an abort: no callback thread to start again
                    callback(outcome)

            worker.submit(GPUTask(batch), done)
            return outcome
        submit = self._cpu_executor(target)[0]
        started, n_calls = time.perf_counter(), len(batch)
        stats = self._cpu_stats[target]

        def cpu_done(future):
            seconds = time.perf_counter() - started
            with self._stats_lock:
                stats[0] += n_calls
                stats[1] += 1
                stats[2] += seconds
            self._cpu_batching.batch_completed(n_calls, seconds)
            if callback is not None:
                callback(future)

        if has_batched_form(batch.items, "cpu"):
            batch = FusedCPUBatch(batch)
        future = submit(batch)
        future.add_done_callback(cpu_done)
        return future

    def _cpu_executor(self, kind):
        if kind not in self._cpu:
            self._cpu[kind] = (self._make_loky() if kind == _PROCESS and self._cpu_jobs > 1
                               else self._make_threads(kind))
        return self._cpu[kind]

    def _make_loky(self):
        loky = LokyBackend(nesting_level=self.nesting_level,
                           inner_max_num_threads=self.inner_max_num_threads)
        try:
            loky.configure(n_jobs=self._cpu_jobs, parallel=self.parallel, **self._loky_kwargs)
        except FallbackToBackend:  # e.g. below a thread or in a daemon process
            return self._make_threads(_PROCESS, n_threads=1)
        folders, call_id = loky._workers._temp_folder_manager, self.parallel._id

        def submit(batch):
            # What joblib does for its own LokyBackend only: while a batch is pickled,
            # memmapped arrays go to this Parallel call's temporary folder, which
            # loky.terminate() then deletes (without it the files outlive the call).
            inner = batch.batch if isinstance(batch, FusedCPUBatch) else batch
            inner._reducer_callback = functools.partial(folders.set_current_context, call_id)
            return loky.submit(batch)

        return (submit, loky.terminate, lambda: loky.abort_everything(ensure_ready=False))

    def _make_threads(self, kind, n_threads=None):
        pool = ThreadPoolExecutor(n_threads or self._cpu_jobs,
                                  thread_name_prefix=f"devicejoblib-{kind}")
        return (pool.submit, pool.shutdown, lambda: pool.shutdown(cancel_futures=True))


def _release(threads, resident):
    _stop_all(threads)
    resident.release()


def _stop_all(workers, wait=True):
    for worker in workers:
        worker.stop(wait)
