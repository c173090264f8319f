"""Aids for trying, testing and measuring devicejoblib without GPUs: simulated GPUs in
this process (:func:`simulate_gpus`) and a local Dask cluster whose GPU workers each see
one simulated GPU (:func:`simulated_cluster`).

Both are also importable from :mod:`devicejoblib` itself, as before this module existed.
"""

from __future__ import annotations

from ._devices import GPU_RESOURCE, simulate_gpus
from .executors.dask_client import INSTALL_HINT

__all__ = ["simulate_gpus", "simulated_cluster"]


def simulated_cluster(cpu_workers=1, gpu_workers=2, threads_per_worker=1, env=None,
                      lose_gpu_after=None, **cluster_kwargs):
    """A Dask cluster on this machine (127.0.0.1) whose GPU workers see one simulated GPU
    each: to try, test and measure the cluster route without GPUs.

    Parameters
    ----------
    cpu_workers, gpu_workers : int
        Worker processes (``Nanny``) without and with a GPU: GPU workers declare
        ``resources={"GPU": 1}`` and run with ``DEVICEJOBLIB_SIMULATE_GPUS=1``.
    threads_per_worker : int
    env : dict, optional
        More environment variables for every worker (``PYTHONPATH``...).
    lose_gpu_after : dict, optional
        Fault injection: ``{k: n}`` makes the GPU of GPU worker ``k`` lost after ``n``
        launches (``DEVICEJOBLIB_SIMULATED_LOSS`` there).
    **cluster_kwargs
        Passed to ``distributed.SpecCluster`` (``silence_logs``...).

    Returns
    -------
    distributed.SpecCluster
        Use it as a context manager, with ``distributed.Client(cluster)``.
    """
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"simulated_cluster() needs the distributed package: "
                          f"{INSTALL_HINT}") from exc

    def worker(gpu, index=None):
        options = {"nthreads": threads_per_worker, "host": "127.0.0.1",
                   "dashboard_address": "127.0.0.1:0",
                   "env": {**(env or {}), "DEVICEJOBLIB_SIMULATE_GPUS": "1" if gpu else "0"}}
        if gpu:
            options["resources"] = {GPU_RESOURCE: 1}
            if index in (lose_gpu_after or {}):
                options["env"]["DEVICEJOBLIB_SIMULATED_LOSS"] = f"0:{lose_gpu_after[index]}"
        return {"cls": distributed.Nanny, "options": options}

    workers = {f"cpu-{i}": worker(False) for i in range(cpu_workers)}
    workers.update({f"gpu-{i}": worker(True, i) for i in range(gpu_workers)})
    scheduler = {"cls": distributed.Scheduler,
                 "options": {"host": "127.0.0.1", "dashboard": False,
                             "dashboard_address": "127.0.0.1:0"}}
    return distributed.SpecCluster(workers=workers, scheduler=scheduler, **cluster_kwargs)
