"""PyTorch: tensors on CUDA GPUs. A worker thread uses its device and one stream (the
CuPy stream of the thread, wrapped, where CuPy is bound too); NumPy arrays and host
tensors move there through pinned memory without blocking; results come back as host
tensors, detached from any autograd graph."""

from __future__ import annotations

import contextlib
import sys

from .base import ArrayLibrary


class TorchLibrary(ArrayLibrary):
    """PyTorch tensors on CUDA devices (``@k.cuda(library="torch")``)."""

    name = package = "torch"
    serves = ("cuda",)
    lists_devices = True

    def probe(self):
        import torch

        found = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            found.append({"index": index, "name": props.name, "memory_total": total,
                          "memory_free": free,
                          "multiprocessor_count": props.multi_processor_count,
                          "compute_capability": (props.major, props.minor)})
        versions = {"provider": f"torch {torch.__version__}"}
        if torch.version.cuda:
            versions["runtime"] = torch.version.cuda
        return found, versions

    def module(self):
        import torch

        return torch

    # --- a worker thread -------------------------------------------------------------

    def bind(self, device, stream=None):
        import torch

        torch.cuda.set_device(device.index)
        pointer = _stream_pointer(stream)
        if pointer is not None:  # another library's stream: one queue for both
            own = torch.cuda.ExternalStream(pointer, device=device.index)
        else:
            own = torch.cuda.Stream(device=device.index)
        torch.cuda.set_stream(own)
        return own.synchronize, own if stream is None else stream

    @contextlib.contextmanager
    def bound(self, device):
        import torch

        with torch.cuda.device(device.index):
            stream = torch.cuda.Stream(device=device.index)
            with torch.cuda.stream(stream):
                yield stream.synchronize

    def synchronize(self):
        import torch

        torch.cuda.current_stream().synchronize()

    # --- tensors ---------------------------------------------------------------------

    def array_types(self):
        torch = sys.modules.get("torch")  # no tensor exists before torch is imported
        return () if torch is None else (torch.Tensor,)

    def home_of(self, value):
        if value.is_cuda:
            return f"cuda:{value.device.index}"
        # a simulated GPU's (CPU) tensor, or a view of one (a fused call's row)
        home = getattr(value, SIMULATED_HOME, None)
        base = value._base
        return home if home is not None or base is None else getattr(base, SIMULATED_HOME,
                                                                     None)

    def to_device(self, value):
        import numpy as np
        import torch

        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        elif not isinstance(value, torch.Tensor):
            cupy = sys.modules.get("cupy")
            if cupy is not None and isinstance(value, cupy.ndarray):
                return torch.from_dlpack(value)  # a view, no copy
            return value
        if value.is_cuda:
            return value
        return value.pin_memory().to(torch.cuda.current_device(), non_blocking=True)

    def to_host(self, value, keep_on_device=False):
        value = value.detach()  # no autograd graph outlives its call
        return value if keep_on_device or not value.is_cuda else value.cpu()

    def stack(self, values):
        import torch

        tensors = [v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for v in values]
        return self.to_device(torch.stack(tensors))

    def empty_like(self, array):
        import torch

        return torch.empty_like(array)

    # --- memory ----------------------------------------------------------------------

    def is_out_of_memory(self, error):
        torch = sys.modules.get("torch")
        oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
        return oom is not None and isinstance(error, oom)

    def free_cached_memory(self):
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


#: The attribute a simulated GPU sets on a tensor it kept (CPU tensors stand in for CUDA
#: ones there): the id of the device it lives on.
SIMULATED_HOME = "_devicejoblib_simulated_home"


def _stream_pointer(stream):
    """The CUDA stream handle of another library's stream object, or None."""
    for attribute in ("ptr", "cuda_stream"):  # CuPy's, torch's
        pointer = getattr(stream, attribute, None)
        if isinstance(pointer, int):
            return pointer
    return None
