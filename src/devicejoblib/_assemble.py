"""How a backend, or a Dask worker, is put together from its settings: the router and
the executors (a GPU pool with its launch sizers and launch code, CPU pools, the Dask
client), and the observer that tells the trace and the placement model what the GPU
pool's workers ran."""

from __future__ import annotations

import functools
import time

from ._devices import devices
from .executors.cpu import CPUPool
from .executors.dask_client import DaskClientExecutor
from .executors.gpu_pool import GPUPool
from .observe.bookkeeping import guarded, report_lost
from .observe.trace import describe_part
from .policy.batching import BatchPolicy
from .policy.cluster_routing import ClusterRouter
from .policy.model_store import get_model, learnt_launch_size, remember_launch_sizes
from .policy.placement import auto_kernel, hold_first, release_held
from .policy.routing import CPU_PROCESSES, CPU_THREADS, Router
from .run.tasks import execute_gpu


def local_parts(config, batching, trace=None, reroute=None):
    """``(router, GPU pool)`` of a backend on this machine (``config``: its
    BackendConfig)."""
    loads = {}  # (the router reads the workers' loads: no cycle through the backend)
    router = Router(config.devices, config.placement, model=get_model, loads=loads)
    pool = make_gpu_pool(router.gpus, batching, config.keep_on_device, router.cpu_allowed,
                         reroute, GPUObserver(router, trace))
    loads.update({device_id: worker.load for device_id, worker in pool.workers.items()})
    return router, pool


def cluster_parts(config, batching):
    """``(Dask client executor, router, GPU pool)`` of a backend on a Dask cluster (its
    GPU pools are on the workers: none here)."""
    cluster = DaskClientExecutor(config.client, worker_gpu_pool,
                                 batching.cluster_part_completed, config.retries,
                                 config.wait_for_workers_timeout)
    return cluster, ClusterRouter(cluster, config.placement), make_gpu_pool((), batching)


def cpu_pools(router, batching, sampled=True):
    """A CPU pool per CPU route; ``sampled``: each part's cost is told to the router's
    cost model while it has one."""
    sample = sampling = None
    if sampled:
        sample = guarded("the placement model", functools.partial(router.observe, router.cpu))
        sampling = lambda: router.placer is not None  # noqa: E731
    return {route: CPUPool(route, route == CPU_PROCESSES, sample,
                           batching.cpu_batch_completed, sampling)
            for route in (CPU_PROCESSES, CPU_THREADS)}


def make_gpu_pool(gpus, batching, keep_on_device=False, cpu_fallback=None, reroute=None,
                  observer=None, on_shutdown=None):
    """A GPU pool over ``gpus``, its launches sized by ``batching``'s launch sizers."""
    sizers = {device.id: batching.launch_sizer(device) for device in gpus}

    def execute_for(device):
        return functools.partial(execute_gpu, device, keep_on_device, sizers[device.id],
                                 cpu_fallback=cpu_fallback)

    return GPUPool(gpus, execute_for, sizers, reroute=reroute,
                   observe=observer and observer.group_done,
                   on_thread_exit=observer and observer.thread_ends, on_shutdown=on_shutdown)


def worker_gpu_pool():
    """The GPU pool of a Dask worker (made there by its plugin): the worker's GPUs,
    starting from the launch sizes learnt before, which it keeps when it ends; a lost
    GPU's calls go to the worker's other GPUs."""
    batching = BatchPolicy(learnt=learnt_launch_size)
    pool = make_gpu_pool(
        [d for d in devices() if d.is_gpu], batching,
        on_shutdown=lambda: remember_launch_sizes(batching.launch_sizers.values()))
    pool.limit_host_threads()  # (simulated GPUs share the worker's cores: until shutdown)
    return pool


class GPUObserver:
    """What the GPU workers' groups tell the trace and the cost model (its errors cost
    a warning, never a result)."""

    def __init__(self, router, trace=None):
        self.router = router
        self.trace = trace

    def group_done(self, device, tasks, n_calls, seconds, cost):
        """A group of ``n_calls`` (the calls of ``tasks``) took ``seconds`` on
        ``device``: a slice in the trace; and ``cost`` seconds of the device's (None if
        its cost timer failed), a sample for the cost model (held back if it is the
        thread's first of its kind)."""
        router, trace = self.router, self.trace
        if trace is None and router.placer is None:
            return
        calls = tasks[0].items if len(tasks) == 1 else [c for t in tasks for c in t.items]
        try:
            if trace is not None:
                name, args = describe_part(calls)
                placed = "auto" if any(auto_kernel(f, router.auto) for f, _, _ in calls) \
                    else "rule"
                if cost is not None:  # what of it the thread was working (its cost timer)
                    args["working_ms"] = round(cost * 1e3, 3)
                if device.simulated:  # what the slice's time is modelled on
                    args["timing"] = device.timing
                trace.slice(str(device), name, time.perf_counter() - seconds, seconds,
                            placed=placed, **args)
            sample(router, router.sample_key(device, calls), n_calls, cost)
        except Exception as exc:  # never at the cost of the results
            report_lost("the trace or the placement model", exc)

    def thread_ends(self):
        """A worker thread ends: its held first samples that no later one followed are
        samples after all."""
        try:
            for key, n_calls, seconds in release_held():
                self.router.record(key, n_calls, seconds)
        except Exception as exc:  # never at the cost of the results
            report_lost("the placement model", exc)


def sample(router, key, n_calls, seconds, hold=True):
    """Record a sample of ``key`` (None: no model's) unless ``seconds`` is None (the
    platform's cost timer failed) or, with ``hold`` (a GPU's), it is this thread's
    first of ``key`` (held back)."""
    if key is None or seconds is None:
        return
    taken = hold_first(key, n_calls, seconds) if hold else (n_calls, seconds)
    if taken is not None:
        router.record(key, *taken)
