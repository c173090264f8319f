"""The device backend on a Dask cluster (``client=``): each routed part of a joblib
batch becomes one Dask task. GPU parts ask for a ``GPU`` resource and run on a GPU
worker as they would run locally (a GPU pool owned by a worker plugin,
:mod:`.dask_worker`); CPU parts run on any worker. Routing between them is decided on
the client (:mod:`devicejoblib.policy.cluster_routing`).

Imports ``distributed`` only when a backend is given a client.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
import uuid
from concurrent.futures import CancelledError, Future

from .._devices import GPU_RESOURCE
from .._errors import (
    BrokenDeviceError,
    ClusterLostError,
    DeviceUnavailableError,
    GPUWorkerLostError,
    with_worker_traceback,
)
from . import Executor, ExecutorStats

#: Seconds between two looks at the cluster while GPU parts wait for a GPU worker.
WATCH_INTERVAL = 0.25

INSTALL_HINT = "pip install 'devicejoblib[dask]' (or pip install distributed)"


def resolve_client(client):
    """The ``distributed.Client`` a backend's ``client=`` names: a Client, or
    ``"default"`` for the current default client (``distributed.get_client()``)."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"client={client!r} runs calls on a Dask cluster, which needs the "
                          f"distributed package: {INSTALL_HINT}") from exc
    if isinstance(client, str) and client == "default":
        try:
            return distributed.get_client()
        except ValueError as exc:
            raise ValueError("Invalid client='default': there is no default Dask client; "
                             "make one first (distributed.Client(...)) or pass it as "
                             "client=") from exc
    if not isinstance(client, distributed.Client):
        raise TypeError(f"Invalid client={client!r}: expected a distributed.Client or "
                        "'default' (the current default client)")
    return client


_GPU_KEY, _CPU_KEY = "devicejoblib-gpu-part-", "devicejoblib-cpu-part-"


def _gpu_workers(workers):
    """Addresses of the workers that declare a GPU resource."""
    return tuple(address for address, worker in workers.items()
                 if worker.get("resources", {}).get(GPU_RESOURCE, 0) > 0)


def _workers_info(client):
    try:
        info = client.scheduler_info(n_workers=-1)  # newer releases list 5 by default
    except TypeError:
        info = client.scheduler_info()
    return info.get("workers", {})


class DaskClientExecutor(Executor):
    """The backend's view of a Dask cluster: its workers, the parts in flight, and what
    each worker and device ran.

    Parameters
    ----------
    client : distributed.Client
    make_pool : callable
        ``make_pool()``, run on a GPU worker (pickled by reference): its GPU pool.
    on_part : callable, optional
        ``on_part(gpu, n_calls, round_trip, seconds, whole)``: told each part's round
        trip here and compute time there (the cluster's batch sizes).
    retries : int
        Dask ``retries=`` of each part (a part whose call raised runs again).
    wait_for_workers_timeout : float
        Seconds to wait for a first worker when a call starts, and for a GPU worker
        while GPU parts are in flight and the cluster has none (Dask would keep them
        waiting forever): then they fail.
    """

    def __init__(self, client, make_pool, on_part=None, retries=0,
                 wait_for_workers_timeout=10.0):
        self.client = client
        self.make_pool = make_pool
        self._on_part = on_part
        self.retries = retries
        self.patience = wait_for_workers_timeout
        self._watcher = None  # the thread watching for GPU workers, while it runs
        self._failed = {}  # key of a Dask future -> the error its part fails with
        self.lost_workers = {}  # address -> GPUWorkerLostError: its GPUs are all lost
        self.name = f"devicejoblib-{uuid.uuid4().hex}"  # this backend's pools on workers
        self._lock = threading.Lock()
        self._in_flight = set()  # Dask futures not done yet
        self._plugin = None
        self._stats = {}  # (worker address, device id) -> ExecutorStats
        self._read(_workers_info(self.client))  # (a call waits for workers, not this)

    def refresh(self):
        """Read the cluster's workers again when a call starts. With none, wait up to
        ``patience`` seconds for one, by a probe task (an adaptive cluster scales up
        for it, as for joblib's dask backend), then fail."""
        self._check_connected()
        workers = _workers_info(self.client)
        if not workers:
            try:
                if not self.patience:
                    raise TimeoutError("no worker")
                self.client.submit(_probe, pure=False).result(timeout=self.patience)
            except Exception as exc:  # distributed's TimeoutError
                raise TimeoutError(f"the Dask cluster at {self._address()} has no worker "
                                   f"after {self.patience:g} s (raise "
                                   "wait_for_workers_timeout= to wait longer)") from exc
            workers = _workers_info(self.client)
        self._read(workers)

    def _address(self):
        return getattr(self.client.scheduler, "address", None) or "(unknown address)"

    def _check_connected(self):
        status = getattr(self.client, "status", "running")
        if status != "running":
            raise ClusterLostError(f"the Dask client is not connected to its scheduler at "
                                   f"{self._address()} (status {status!r})")

    def _read(self, workers):
        self.addresses = tuple(workers)
        self.gpu_workers = tuple(a for a in _gpu_workers(workers)
                                 if a not in self.lost_workers)
        self.threads = sum(worker.get("nthreads", 1) for worker in workers.values())

    def describe(self):
        return (f"the cluster has {len(self.addresses)} worker(s), "
                f"{len(self.gpu_workers)} with a {GPU_RESOURCE!r} resource")

    def n_jobs(self):
        """joblib's ``n_jobs``: the cluster's worker threads (at least 2: never
        joblib's sequential path, which would run the calls here)."""
        return max(self.threads, 2)

    def submit(self, target, batch, on_done=None, whole=None):
        """Run the part ``batch`` (of a joblib batch of ``whole`` calls) on the cluster;
        a Future of its results, passed to ``on_done`` once done."""
        gpu = target.is_gpu
        future = Future()
        future.set_running_or_notify_cancel()
        self._send(batch, gpu, future, on_done, whole or len(batch))
        return future

    def _send(self, batch, gpu, future, on_done, whole):
        """Submit the part ``batch`` as a Dask task whose outcome completes ``future``
        (GPU parts only to GPU workers not known to have lost their GPUs)."""
        from . import dask_worker

        if gpu:
            self._register_plugin()
            function = functools.partial(dask_worker.gpu_part, self.name)
        else:
            function = dask_worker.cpu_part
        key = f"{_GPU_KEY if gpu else _CPU_KEY}{uuid.uuid4().hex}"
        started = time.perf_counter()
        dask_future = self.client.submit(
            function, batch, key=key, pure=False, retries=self.retries or None,
            resources={GPU_RESOURCE: 1} if gpu else None,
            workers=list(self.gpu_workers) if gpu and self.lost_workers else None)
        with self._lock:
            self._in_flight.add(dask_future)
            if gpu and self._watcher is None:
                self._watcher = threading.Thread(target=self._watch_gpu_workers, daemon=True,
                                                 name="devicejoblib-cluster-watch")
                self._watcher.start()
        dask_future.add_done_callback(functools.partial(
            self._done, future, on_done, gpu, batch, whole, started))

    def _done(self, future, on_done, gpu, batch, whole, started, dask_future):
        round_trip = time.perf_counter() - started
        with self._lock:
            self._in_flight.discard(dask_future)
            failed = self._failed.pop(dask_future.key, None)
        try:
            if failed is not None:
                raise failed
            results, where, seconds = dask_future.result()
        except GPUWorkerLostError as exc:  # run the part on another GPU worker
            try:
                self._lose_worker(exc)
                self._send(batch, gpu, future, on_done, whole)
                return
            except BaseException as error:
                future.set_exception(self._error(error))
        except BaseException as exc:  # the part's error, or the cluster's
            future.set_exception(self._error(exc))
        else:
            n_calls = len(batch)
            with self._lock:
                self._stats.setdefault(where, ExecutorStats()).add(n_calls, seconds)
            if self._on_part is not None:
                self._on_part(gpu, n_calls, round_trip, seconds, whole)
            future.set_result(results)
        del dask_future
        if on_done is not None:
            on_done(future)

    def _lose_worker(self, error):
        """A worker lost every GPU: no more GPU parts go there; the error when no GPU
        worker is left."""
        with self._lock:
            self.lost_workers[error.address] = error
        self._read(_workers_info(self.client))
        if not self.gpu_workers:
            lost = BrokenDeviceError(
                "no GPU worker left in the Dask cluster: " + "; ".join(
                    map(str, self.lost_workers.values())))
            lost.__cause__ = error
            raise lost

    def _error(self, exc):
        status = getattr(self.client, "status", "running")
        # a connection error of the client (not raised by a call: those are the task's)
        comm = isinstance(exc, OSError) and type(exc).__module__.startswith(
            ("distributed", "tornado"))
        if comm or (isinstance(exc, CancelledError) and status != "running"):
            lost = ClusterLostError(f"the connection to the Dask scheduler at "
                                    f"{self._address()} was lost (client "
                                    f"status {status!r}): calls in flight cannot complete")
            lost.__cause__ = exc
            return lost
        if not isinstance(exc, CancelledError):
            with_worker_traceback(exc)
            exc.__traceback__ = None  # its frames would hold this part's batch
        return exc

    def _watch_gpu_workers(self):
        """While GPU parts are in flight: fail them once the cluster has had no GPU
        worker for ``patience`` seconds (a GPU worker died and none replaced it)."""
        since = None
        while True:
            time.sleep(WATCH_INTERVAL)
            with self._lock:
                waiting = [f for f in self._in_flight if f.key.startswith(_GPU_KEY)]
                if not waiting or self.client.status != "running":
                    self._watcher = None
                    return
            try:
                self._read(_workers_info(self.client))
            except Exception:  # the scheduler is going away: the futures will say so
                continue
            since = None if self.gpu_workers else since or time.monotonic()
            if since is None or time.monotonic() - since < self.patience:
                continue
            error = DeviceUnavailableError(
                f"the Dask cluster has had no GPU worker for {self.patience:g} s "
                f"({self.describe()}): {len(waiting)} GPU part(s) cannot run (raise "
                "wait_for_workers_timeout= to wait longer for GPU workers)")
            with self._lock:
                self._failed.update((f.key, error) for f in waiting)
            self.client.cancel(waiting)
            since = None

    def abort(self, patience=None):
        """Cancel the parts in flight (joblib wants none of their results)."""
        with self._lock:
            in_flight, self._in_flight = list(self._in_flight), set()
        if in_flight and self.client.status == "running":
            # on the client's event loop, not waited for: with the scheduler gone it
            # would block this thread until the connection times out
            self.client.loop.add_callback(self.client.cancel, in_flight, asynchronous=True)

    def _register_plugin(self):
        if self._plugin is None:
            from .dask_worker import GPUPoolPlugin

            plugin = GPUPoolPlugin(self.name, self.make_pool)
            register = getattr(self.client, "register_plugin", None) or \
                self.client.register_worker_plugin
            register(plugin, name=self.name)
            self._plugin = plugin

    def shutdown(self, wait=True):
        """Let go of this backend's GPU pools on the workers (their threads and the
        kernels' resident state)."""
        release_pools(self.client, self._plugin and self.name)
        self._plugin = None

    def stats(self):
        """Calls, parts and seconds per worker address and device."""
        with self._lock:
            return {f"{address}/{device}": {"worker": address, "device": device,
                                            **stats.row()}
                    for (address, device), stats in self._stats.items()}


_releasing = set()  # unregistrations running on a client's event loop


def release_pools(client, name):
    """Unregister the worker plugin ``name`` (its teardown stops the pools); quiet if
    the client or cluster is gone already."""
    if not name:
        return
    try:
        if client.status == "running":
            done = client.unregister_worker_plugin(name)
            if inspect.isawaitable(done):  # collected on the client's event loop thread
                task = asyncio.ensure_future(done)
                _releasing.add(task)  # (the loop keeps only a weak reference to it)
                task.add_done_callback(_releasing.discard)
    except Exception:  # at exit, or after the scheduler was lost: the workers are gone
        pass


def _probe():
    """A task that waits for a worker (and makes an adaptive cluster start one)."""
