"""Which device each call goes to, by one rule with a clear precedence:

1. explicit placement: the call's own (``kernel.on(...)``), else the backend's
   ``placement=`` — the call may only run on those devices;
2. data affinity: an array argument living on GPU k sends the call to GPU k (when
   placement allows it);
3. learned placement, for kernels placed ``"auto"`` (the backend's ``placement="auto"``
   or ``kernel.on("auto")``): the device where the call is expected to finish first, by
   the cost model (:mod:`devicejoblib._placement`);
4. capability: a kernel with a GPU implementation goes to the least loaded GPU; anything
   else goes to the CPU.

A call routed to the CPU then goes to loky worker processes, or to threads for ``nogil``
kernels and when threads were asked for (``prefer="threads"``, ``require="sharedmem"``,
``cpu_backend="threading"``).
"""

from __future__ import annotations

import threading
from typing import NamedTuple

from .._devices import devices
from .._errors import BrokenDeviceError, DeviceUnavailableError
from .._kernels import Kernel
from .._specs import ANYWHERE, CPU_PROCESSES, CPU_THREADS, Placement
from .._utils import warn_once
from ..arrays import device_array_types, home_of
from .placement import AutoPlacer, auto_kernel, device_model, footprint, kernel_key

_PLACER_MADE = threading.Lock()  # a Router's AutoPlacer is made once


def _holds_device_arrays(types, items):
    """Whether a call among ``items`` has an argument of ``types``."""
    return any(holds_any(types, args, kwargs) for _, args, kwargs in items)


def holds_any(types, args, kwargs):
    """Whether a call's arguments include an instance of ``types``."""
    for value in args:
        if isinstance(value, types):
            return True
    return bool(kwargs) and any(isinstance(v, types) for v in kwargs.values())




class Target(NamedTuple):
    """Where a part of a batch goes: its ``route`` (a GPU's id, a CPU route, a cluster
    part), whether that is a GPU, and for calls placed by the cost model their
    ``(kernel, footprint)`` key (None otherwise: placed by rule)."""

    route: str
    is_gpu: bool = False
    key: tuple | None = None

    @property
    def placed(self):
        """``"auto"`` for a part placed by the cost model, else ``"rule"``."""
        return "rule" if self.key is None else "auto"


def _no_load():
    return 0


def _machine_has_gpu():
    return any(d.is_gpu for d in devices())


class Router:
    """Routes the calls of joblib batches over a backend's devices.

    Parameters
    ----------
    devices : sequence of Device
        The backend's devices; placements are resolved against them.
    placement : Placement or device spec
        Where calls may run unless a kernel is pinned with ``.on()``.
    loads : mapping, optional
        GPU id -> a function giving the calls pending on that GPU (default: none; read
        as calls are routed, so it may be filled after the router is made).
    model : callable, optional
        Gives the cost model learned placement uses, when a call is first placed
        ``"auto"`` (default: none, and an auto kernel is routed by capability).
    """

    def __init__(self, devices, placement=ANYWHERE, loads=None, model=None):
        self.devices = tuple(devices)
        self.gpus = tuple(d for d in self.devices if d.is_gpu)
        self.cpu = next((d for d in self.devices if not d.is_gpu), None)
        self._by_id = {d.id: d for d in self.devices}
        self._loads = {} if loads is None else loads
        self._model = model
        self._allowed_cache = {}
        placement = Placement.parse(placement)
        self.auto = placement.auto
        self.placer = None  # the AutoPlacer, made when a call is first placed "auto"
        self.default_allowed = placement.resolve(self.devices)
        self._choices = {}  # (allowed, has GPU impl, has CPU impl) -> capability's answer
        self.lost = {}  # device id -> the BrokenDeviceError that took it out
        self.cpu_slots = 1  # CPU calls at once: learned placement divides its queue by it
        self.cpu_route = CPU_PROCESSES
        self._targets = {}  # route -> its Target, for parts placed by rule
        self._rules = {}  # id(function) -> (function, targets): see _by_rule

    def start_call(self, cpu_route, cpu_slots):
        """A ``Parallel`` call starts: where its CPU calls go, how many run at once."""
        if cpu_route != self.cpu_route:
            self._rules = {}
        self.cpu_route, self.cpu_slots = cpu_route, cpu_slots

    def lose(self, device_id, error):
        """Route no more calls to ``device_id``: its worker cannot go on (``error``)."""
        if device_id not in self.lost:
            self.lost = {**self.lost, device_id: error}
            self._choices, self._rules = {}, {}

    def allowed(self, placement):
        """The devices of this router that ``placement`` (a Placement, not anywhere)
        allows (see :meth:`Placement.resolve`)."""
        allowed = self._allowed_cache.get(placement)
        if allowed is None:
            allowed = self._allowed_cache[placement] = placement.resolve(self.devices)
        return allowed

    def cpu_allowed(self, function):
        """Whether a call of ``function`` may run on the CPU: a kernel with a CPU
        implementation whose placement allows the CPU (a fallback, e.g. out of memory)."""
        if type(function) is not Kernel or not function.has_cpu or self.cpu is None:
            return False
        allowed = self._allowed_for(function)
        return allowed is None or self.cpu in allowed

    def _allowed_for(self, function):
        """The devices a call of ``function`` may use: its pin, else the backend's
        placement; None: any."""
        pin = function.pin if type(function) is Kernel else ANYWHERE
        return self.default_allowed if pin.anywhere else self.allowed(pin)

    def split(self, items, ledger=None):
        """Positions of a batch's calls per target: a GPU id, or a CPU route.

        A call without device-array arguments routes by its function alone, so a batch
        makes one decision per distinct function (and its calls stay together) — but
        the calls of ``auto`` kernels, which are placed one by one by the cost model;
        for those, ``ledger`` (a dict) receives what :meth:`settle` needs once each
        target's part is done. The common batch, one function and no device arrays,
        maps to ``{target: None}``.
        """
        array_types = device_array_types() if self.gpus else ()
        function = items[0][0] if items else None
        if items and (len(items) == 1 or all(f is function for f, _, _ in items)) and (
                not array_types or not _holds_device_arrays(array_types, items)):
            target = self._by_rule(function)
            if target is not None:
                return {target: None}
        groups, by_function, auto = {}, {}, []
        for position, (function, args, kwargs) in enumerate(items):
            if array_types and holds_any(array_types, args, kwargs):
                target = self.target(function, args, kwargs)  # data affinity applies
            elif auto_kernel(function, self.auto):
                auto.append(position)
                continue
            else:
                target = by_function.get(id(function))
                if target is None:
                    target = by_function[id(function)] = self._by_rule(function)
            groups.setdefault(target, []).append(position)
        if auto:
            self._place_auto(items, auto, groups, ledger)
        return {t: sorted(p) for t, p in groups.items()} if auto and groups else groups

    def _place_auto(self, items, positions, groups, ledger):
        """Add the calls at ``positions`` (of auto kernels) to ``groups``, where the cost
        model expects each to finish first."""
        if self.placer is None:
            with _PLACER_MADE:  # (joblib dispatches from two threads)
                if self.placer is None:
                    self.placer = AutoPlacer(self._model(), self._slots)
        chosen, entries = self.placer.place([items[p] for p in positions], self._candidates)
        for indices, device, key in chosen:
            # a part per kernel and footprint: the workers' measurements of it are its own
            route = self._route_of(device, items[positions[indices[0]]][0])
            target = Target(route, device.is_gpu, key)
            groups.setdefault(target, []).extend(positions[i] for i in indices)
            if ledger is not None and (device.id, *key) in entries:
                ledger[target] = (device.id, entries.pop((device.id, *key)))

    def settle(self, entry):
        """A part placed by the cost model is done (``entry`` from ``split``'s ledger)."""
        device_id, queued = entry
        self.placer.settle(device_id, queued)

    def observe(self, device, items, n_calls, seconds):
        """A worker ran ``items`` (among ``n_calls`` calls) on ``device`` in ``seconds``:
        a sample of the auto kernel and footprint they are calls of."""
        self.record(self.sample_key(device, items), n_calls, seconds)

    def sample_key(self, device, items):
        """``(kernel, device model, footprint)`` the cost model learns ``items`` (calls run
        together on ``device``) under, or None: not all calls of one auto kernel and
        footprint, or no model in use."""
        if self.placer is None:
            return None
        keys = set()
        for function, args, kwargs in items:
            if not auto_kernel(function, self.auto):
                return None  # a part of other calls too: its time is not this kernel's
            keys.add((kernel_key(function), footprint(args, kwargs)))
            if len(keys) > 1:
                return None  # (parts of several kernels or sizes, run together: the same)
        if not keys:
            return None
        (kernel, bucket), = keys
        return kernel, device_model(device), bucket

    def record(self, key, n_calls, seconds):
        """A sample: ``n_calls`` calls under ``key`` (from :meth:`sample_key`) took
        ``seconds``."""
        if key is not None and n_calls:
            self.placer.model.record(*key, seconds / n_calls)

    def _candidates(self, function):
        """The devices an auto kernel's calls may use: allowed, not lost, able to run it."""
        allowed = self._allowed_for(function) or self.devices
        found = tuple(d for d in allowed if d.id not in self.lost
                      and (function.has_gpu if d.is_gpu else function.has_cpu))
        # none able to run it natively: where the capability rule sends it (a CPU-only
        # kernel on a GPU's worker thread), or its error
        return found or (self.route(function, (), {}),)

    def _slots(self, device):
        return 1 if device.is_gpu else self.cpu_slots

    def _route_of(self, device, function):
        """The route of a call of ``function`` sent to ``device``."""
        if device.is_gpu:
            return device.id
        if type(function) is Kernel and function.nogil:
            return CPU_THREADS
        return self.cpu_route

    def target(self, function, args, kwargs):
        """Where one call runs, placed by rule: a GPU, or :data:`CPU_PROCESSES` /
        :data:`CPU_THREADS`."""
        return self._target_of(self.route(function, args, kwargs), function)

    def _target_of(self, device, function):
        route = self._route_of(device, function)
        target = self._targets.get(route)
        if target is None:
            target = self._targets[route] = Target(route, device.is_gpu)
        return target

    def _by_rule(self, function):
        """:meth:`target` of a call of ``function`` without device arrays, or None for
        an auto kernel's (placed by the cost model). Its capability's answer is kept
        per function (until a device is lost or the CPU route changes): a batch costs a
        look at the GPUs' loads only (the dispatch hot path, bench_dispatch.py)."""
        rule = self._rules.get(id(function))
        if rule is None or rule[0] is not function:
            targets = None
            if not auto_kernel(function, self.auto):
                gpus, other = self._capability(function, self._allowed_for(function))
                targets = tuple((self._loads.get(d.id, _no_load), self._target_of(d, function))
                                for d in gpus or (other,))
            rule = self._rules[id(function)] = (function, targets)
        targets = rule[1]
        if targets is None or len(targets) == 1:
            return targets and targets[0][1]
        best, least = None, None
        for load, target in targets:  # the least loaded; the first of equals
            pending = load()
            if least is None or pending < least:
                best, least = target, pending
        return best

    def route_one(self, function, args, kwargs):
        """``(device, ledger entry or None)`` for one call run in the caller (n_jobs=1):
        by the cost model for an auto kernel (the entry goes back to :meth:`settle`),
        else by :meth:`route`."""
        array_types = device_array_types() if self.gpus else ()
        if not auto_kernel(function, self.auto) or (
                array_types and holds_any(array_types, args, kwargs)):
            return self.route(function, args, kwargs), None
        groups, ledger = {}, {}
        self._place_auto([(function, args, kwargs)], [0], groups, ledger)
        (target, _), = groups.items()
        return self._by_id.get(target.route, self.cpu), ledger.get(target)

    def route(self, function, args, kwargs):
        """The device for one call of ``function(*args, **kwargs)``."""
        allowed = self._allowed_for(function)
        if self.gpus and (args or kwargs):
            for value in (*args, *kwargs.values()):
                device = self._by_id.get(home_of(value))
                if (device is not None and (allowed is None or device in allowed)
                        and device.id not in self.lost):
                    return device
        gpus, other = self._capability(function, allowed)
        if gpus:
            return gpus[0] if len(gpus) == 1 else min(gpus, key=self._load_of)
        return other

    def _capability(self, function, allowed):
        """``(GPUs to pick the least loaded from, else the device)`` for a call of
        ``function`` that ``allowed`` devices may run (None: any), by capability; kept
        per (allowed, implementations). Raises or warns where no device fits."""
        is_kernel = type(function) is Kernel
        has_gpu = is_kernel and function.has_gpu
        has_cpu = not is_kernel or function.has_cpu
        key = (id(allowed), has_gpu, has_cpu)  # allowed tuples live as long as the router
        choice = self._choices.get(key)
        if choice is None:
            choice = self._choices[key] = self._choose(allowed, has_gpu, has_cpu, function)
        if not choice[0] and not has_cpu:
            has = ", ".join(str(d) for d in (allowed or self.devices))
            raise DeviceUnavailableError(
                f"kernel {function.__qualname__!r} has only a GPU implementation and no "
                f"GPU to run on: the devices its calls may use are {has} (give the "
                "backend a GPU, or DEVICEJOBLIB_SIMULATE_GPUS to simulate one)")
        if (not choice[0] and has_gpu and allowed is None and not self.gpus
                and not _machine_has_gpu()):
            warn_once(f"kernel {function.__qualname__!r} has a GPU implementation but this "
                      "machine has no GPU: its calls run on the CPU (set placement='gpu' to "
                      "make this an error, or DEVICEJOBLIB_SIMULATE_GPUS to simulate GPUs)",
                      RuntimeWarning)
        return choice

    def _choose(self, allowed, has_gpu, has_cpu, function):
        """``(GPUs to pick the least loaded from, else the device)`` by capability."""
        candidates = allowed if allowed is not None else self.devices
        if self.lost:
            live = tuple(d for d in candidates if d.id not in self.lost)
            if not live:
                self._no_device_left(candidates, function)
            candidates = live
        gpus = tuple(d for d in candidates if d.is_gpu)
        cpu_possible = self.cpu in candidates and has_cpu
        if gpus and (has_gpu or not cpu_possible):
            return gpus, None
        return (), self.cpu if cpu_possible else candidates[0]

    def _no_device_left(self, candidates, function):
        name = getattr(function, "__qualname__", repr(function))
        errors = [self.lost[d.id] for d in candidates]
        raise BrokenDeviceError(
            f"no device left to run {name}: " + "; ".join(map(str, errors))) from errors[-1]

    def _load_of(self, device):
        return self._loads.get(device.id, _no_load)()
