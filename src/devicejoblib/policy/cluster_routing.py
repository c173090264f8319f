"""Routing on a Dask cluster (``client=``), decided here on the client by kind of
device: Dask's scheduler keeps one duration estimate per task prefix, shared by CPU and
GPU workers, so it cannot choose between them."""

from __future__ import annotations

from .._devices import GPU_RESOURCE
from .._errors import DeviceUnavailableError
from .._kernels import Kernel
from .._specs import ANYWHERE
from .._utils import warn_once
from .routing import Target

#: The two parts a batch may have on a cluster: GPU workers, and any worker.
GPU_PART_TARGET = Target("dask-gpu", True)
CPU_PART_TARGET = Target("dask-cpu", False)


class ClusterRouter:
    """Routes calls over a cluster by kind: GPU workers (those declaring a ``GPU``
    resource) or any worker. The rule is the local one: explicit placement (by kind:
    ``"cuda:1"`` means a GPU), then capability; a kernel with a GPU implementation and no
    GPU worker falls back to CPU workers where it has a CPU implementation and placement
    allows, else fails naming what the cluster has.
    """

    gpus = ()  # (no GPU worker thread in this process)
    placer = None  # learned placement is local only, for now

    def __init__(self, cluster, placement=ANYWHERE):
        self.cluster = cluster
        self.placement = placement

    def start_call(self, *args):
        """Nothing to choose per call: CPU parts go to Dask workers."""

    def split(self, items, ledger=None):
        """Positions of a batch's calls per part (GPU workers, any worker);
        ``{target: None}`` when every call goes to one part."""
        targets, groups = {}, {}
        for position, (function, _, _) in enumerate(items):
            target = targets.get(id(function))
            if target is None:
                target = targets[id(function)] = self.target(function)
            groups.setdefault(target, []).append(position)
        if len(groups) == 1:
            return {next(iter(groups)): None}
        return groups

    def target(self, function):
        """Where calls of ``function`` run: the cluster's GPU workers or any worker."""
        is_kernel = type(function) is Kernel
        pin = function.pin if is_kernel and not function.pin.anywhere else None
        placement = self.placement if pin is None else pin
        gpu_allowed, cpu_allowed = placement.allows_gpu(), placement.allows_cpu()
        has_gpu = is_kernel and function.has_gpu
        has_cpu = not is_kernel or function.has_cpu
        if gpu_allowed and self.cluster.gpu_workers and (has_gpu or not (cpu_allowed and has_cpu)):
            return GPU_PART_TARGET
        if cpu_allowed and has_cpu:
            if has_gpu and gpu_allowed and self.cluster.addresses:
                warn_once(f"kernel {function.__qualname__!r} has a GPU implementation but "
                          f"the Dask cluster has no GPU worker ({self.cluster.describe()}): "
                          "its calls run on CPU workers", RuntimeWarning,
                          key=("no GPU worker", function.__qualname__))
            return CPU_PART_TARGET
        name = getattr(function, "__qualname__", repr(function))
        if not gpu_allowed:
            raise DeviceUnavailableError(
                f"{name!r} cannot run where it is placed: it has a GPU implementation "
                f"only and its placement ({placement.shown!r}) "
                "allows no GPU")
        needs = "a GPU implementation only" if not has_cpu else "a placement on GPUs"
        raise DeviceUnavailableError(
            f"{name!r} cannot run on this Dask cluster: it has {needs} and "
            f"{self.cluster.describe()}; start GPU workers that declare the resource "
            f"(resources={{'{GPU_RESOURCE}': 1}}, or dask worker --resources "
            f"'{GPU_RESOURCE}=1')")
