"""Which device each call goes to, by one rule with a clear precedence:

1. explicit placement: the call's own (``kernel.on(...)``), else the backend's
   ``placement=`` — the call may only run on those devices;
2. data affinity: an array argument living on GPU k sends the call to GPU k (when
   placement allows it);
3. capability: a kernel with a GPU implementation goes to the least loaded GPU; anything
   else goes to the CPU.
"""

from __future__ import annotations

from ._arrays import device_id_of
from ._devices import parse_devices
from ._kernels import Kernel
from ._utils import warn_user


class Router:
    """Routes calls over a fixed set of devices; caches the parsing of placements."""

    def __init__(self, devices, placement=None):
        self.devices = tuple(devices)
        self.gpus = tuple(d for d in self.devices if d.is_gpu)
        self.cpu = next((d for d in self.devices if not d.is_gpu), None)
        self._by_id = {d.id: d for d in self.devices}
        self._allowed_cache = {}
        self.default_allowed = self.allowed(placement) if placement is not None else None
        self._warned = set()

    def allowed(self, placement):
        """The devices a placement spec allows, among this router's devices."""
        key = repr(placement)
        if key not in self._allowed_cache:
            wanted = parse_devices(placement)
            self._allowed_cache[key] = tuple(self._by_id.get(d.id, d) for d in wanted)
        return self._allowed_cache[key]

    def route(self, function, args, kwargs, load):
        """The device for one call of ``function(*args, **kwargs)``.

        ``load`` maps a GPU's id to its number of pending calls.
        """
        placement = getattr(function, "placement", None) if type(function) is Kernel else None
        allowed = self.allowed(placement) if placement is not None else self.default_allowed
        if self.gpus and (args or kwargs):
            for value in (*args, *kwargs.values()):
                device = self._by_id.get(device_id_of(value))
                if device is not None and (allowed is None or device in allowed):
                    return device
        candidates = allowed if allowed is not None else self.devices
        gpus = [d for d in candidates if d.is_gpu]
        has_gpu_impl = type(function) is Kernel and function.has_gpu
        cpu_possible = self.cpu in candidates and (type(function) is not Kernel
                                                   or function.has_cpu)
        if gpus and (has_gpu_impl or not cpu_possible):
            return min(gpus, key=lambda d: load(d.id))
        if has_gpu_impl and allowed is None and not self.gpus:
            self._warn_cpu_fallback(function)
        return self.cpu if cpu_possible else candidates[0]

    def _warn_cpu_fallback(self, function):
        name = function.__qualname__
        if name not in self._warned:
            self._warned.add(name)
            warn_user(f"kernel {name!r} has a GPU implementation but this machine has no GPU: "
                      "its calls run on the CPU (set placement='gpu' to make this an error, "
                      "or DEVICEJOBLIB_SIMULATE_GPUS to simulate GPUs)", RuntimeWarning)
