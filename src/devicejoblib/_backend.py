"""The joblib backend ``"device"``: routes each call of a batch to CPU workers (loky
processes, or threads) or to the worker thread of a GPU, and joins the parts so that
joblib sees one batch, one callback, results in order."""

from __future__ import annotations

import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

from joblib import parallel_config
from joblib._parallel_backends import (
    FallbackToBackend,
    LokyBackend,
    ParallelBackendBase,
)
from joblib.parallel import BatchedCalls, get_active_backend

from ._arrays import device_array_types, holds_any, to_host
from ._devices import parse_devices
from ._kernels import Kernel
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
    """

    supports_retrieve_callback = True
    # GPU workers are threads of this process, and require="sharedmem" sends CPU calls
    # to threads too: every call then shares the caller's memory.
    supports_sharedmem = True
    default_n_jobs = 1

    def __init__(self, devices=None, placement=None, cpu_backend="loky", n_cpu_jobs=None,
                 keep_on_device=False, nesting_level=None, inner_max_num_threads=None,
                 **backend_kwargs):
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **backend_kwargs)
        if cpu_backend not in CPU_BACKENDS:
            raise ValueError(f"Invalid cpu_backend={cpu_backend!r}: expected one of "
                             f"{', '.join(map(repr, CPU_BACKENDS))}")
        if n_cpu_jobs is not None and (not isinstance(n_cpu_jobs, int) or n_cpu_jobs == 0
                                       or isinstance(n_cpu_jobs, bool)):
            raise ValueError(f"Invalid n_cpu_jobs={n_cpu_jobs!r}: expected a non-zero "
                             "integer (-1 for all CPUs) or None")
        self.cpu_backend = cpu_backend
        self.n_cpu_jobs = n_cpu_jobs
        self.keep_on_device = keep_on_device
        self.router = Router(parse_devices(devices), placement)
        self.workers = {d.id: GPUWorker(d, keep_on_device) for d in self.router.gpus}
        self._cpu = {}  # executor kind -> (submit, shutdown, abort)
        self._cpu_stats = {_PROCESS: [0, 0, 0.0], _THREAD: [0, 0, 0.0]}
        self._stats_lock = threading.Lock()
        self._cpu_jobs = 1
        self._callbacks = CallbackThread("devicejoblib-callbacks")
        self._finalizer = weakref.finalize(
            self, _stop_all, [*self.workers.values(), self._callbacks])

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
        self._cpu_jobs = self._resolve_cpu_jobs(n_jobs)
        threads = self.cpu_backend == "threading" or prefer == "threads" or (
            require == "sharedmem")
        self._default_cpu = _THREAD if threads else _PROCESS
        self._loky_kwargs = kwargs
        self._batching.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def compute_batch_size(self):
        return self._batching.compute_batch_size()

    def batch_completed(self, batch_size, duration):
        self._batching.batch_completed(batch_size, duration)

    def submit(self, func, callback=None):
        groups = self._route(func.items)
        if len(groups) == 1:
            (target, _), = groups.items()
            return self._submit_part(target, func, callback)
        joined = _JoinedBatch(len(func.items), len(groups), callback)
        for target, positions in groups.items():
            part = _sub_batch(func, [func.items[i] for i in positions])
            self._submit_part(target, part, joined.part_done(positions))
        return joined

    def retrieve_result_callback(self, out):
        return out.result()

    def abort_everything(self, ensure_ready=True):
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
        self._batching.reset_batch_stats()
        # Break the backend <-> Parallel cycle so that, once the caller drops both, the
        # backend is freed at once and its finalizer joins the GPU threads.
        self.parallel = self._batching.parallel = None
        # Inside `parallel_config(backend=...)` the same backend serves the next Parallel
        # call: keep its GPU threads; they stop when the backend is collected or shut down.
        if get_active_backend()[0] is not self:
            self.shutdown()

    # --- devicejoblib's own -------------------------------------------------------------

    def shutdown(self):
        """Stop and join the GPU worker threads (they restart on the next call)."""
        _stop_all([*self.workers.values(), self._callbacks])

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
                                  "seconds": worker.busy_seconds}
        return out

    def format_report(self):
        """The dispatch report, one line per device."""
        return "\n".join(f"{device}: {r['calls']} calls in {r['batches']} batches, "
                         f"{r['seconds']:.3f}s" for device, r in self.report().items())

    # --- internals ----------------------------------------------------------------------

    @property
    def _batching(self):
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

    def _load(self, device_id):
        return self.workers[device_id].pending_calls

    def _submit_part(self, target, batch, callback):
        worker = self.workers.get(target)
        if worker is not None:
            outcome = _Outcome()
            task = _GPUTask(batch, worker.device, self.keep_on_device)

            def done(result, error, seconds):
                outcome.value, outcome.error = result, error
                if callback is not None:
                    self._callbacks.call(callback, outcome)

            worker.submit(task, len(batch), done)
            return outcome
        submit = self._cpu_executor(target)[0]
        started, n_calls = time.perf_counter(), len(batch)
        stats = self._cpu_stats[target]

        def cpu_done(future):
            with self._stats_lock:
                stats[0] += n_calls
                stats[1] += 1
                stats[2] += time.perf_counter() - started
            if callback is not None:
                callback(future)

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
        return (lambda batch: loky.submit(batch), loky.terminate,
                lambda: loky.abort_everything(ensure_ready=False))

    def _make_threads(self, kind, n_threads=None):
        pool = ThreadPoolExecutor(n_threads or self._cpu_jobs,
                                  thread_name_prefix=f"devicejoblib-{kind}")
        return (pool.submit, pool.shutdown, lambda: pool.shutdown(cancel_futures=True))


class _GPUTask:
    """A batch's calls as a GPU worker runs them: in order, under joblib's nested config,
    results copied to the host (unless kept on the device), each error annotated with
    the device and the call that raised it."""

    def __init__(self, batch, device, keep_on_device):
        self.batch = batch
        self.device = device
        self.keep_on_device = keep_on_device

    def __call__(self):
        batch = self.batch
        with parallel_config(backend=batch._backend, n_jobs=batch._n_jobs):
            results = []
            for function, args, kwargs in batch.items:
                try:
                    result = function(*args, **kwargs)
                except BaseException as exc:
                    _add_note(exc, f"raised by {_describe(function, args, kwargs)} "
                                   f"on {self.device}")
                    raise
                results.append(to_host(result, self.device, self.keep_on_device))
            return results


class _JoinedBatch:
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


def _sub_batch(batch, items):
    """A BatchedCalls with some of ``batch``'s calls and the same nested config."""
    return BatchedCalls(iter(items), (batch._backend, batch._n_jobs),
                        batch._reducer_callback, batch._pickle_cache)


class _Outcome:
    """The result of a GPU part: set once by its worker before any callback reads it."""

    __slots__ = ("error", "value")

    def __init__(self):
        self.value = self.error = None

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


def _add_note(exc, note):
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10: kept for introspection, not printed by the traceback module
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def _describe(function, args, kwargs):
    name = getattr(function, "__qualname__", repr(function))
    shown = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(shown)})"


def _short(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _stop_all(workers):
    for worker in workers:
        worker.stop()


