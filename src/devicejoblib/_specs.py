"""Device specs (``"cpu"``, ``"cuda:1"``, ``"gpu"``, a GPU index, a list of these) read
once: :func:`parse_devices` turns one into this machine's devices, and :class:`Placement`
is where calls may run (a spec, ``"auto"``, or anywhere), the one value that routing,
the cluster route and learned placement all read."""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import _platforms
from ._devices import SIMULATE_GPUS_ENV, Device, devices, discover
from ._errors import DeviceUnavailableError, InvalidDeviceError
from ._platforms import DEVICE_KINDS
from ._utils import is_whole

#: The routes of CPU calls, next to GPU ids: loky worker processes, or threads (names in
#: reports, traces and progress lines).
CPU_PROCESSES, CPU_THREADS = "cpu", "cpu-threads"

_SPEC = re.compile(r"^([a-z]+)(?::(\d+))?$")
_HINT = f"(set CUDA_VISIBLE_DEVICES or {SIMULATE_GPUS_ENV})"


@dataclass(frozen=True)
class Placement:
    """Where calls may run, parsed once: ``spec`` a device spec (None: anywhere) or
    ``auto`` (learned placement, among every device). Made by :meth:`parse`; equal
    specs make equal (and equally hashed) placements, so that what routing derives from
    one is kept once, however many pinned kernels carry it.

    Attributes
    ----------
    spec : device spec or None
        As the user gave it (a list is kept as a tuple).
    auto : bool
        Calls go where the learnt cost model expects them to finish first.
    kinds : frozenset of bool or None
        Whether each device the spec names is a GPU (True) or the CPU (False), by kind
        alone (a cluster's placement: ``"cuda:1"`` means a GPU of some worker); None
        for anywhere.
    """

    spec: object = None
    auto: bool = False
    kinds: frozenset | None = None

    @classmethod
    def parse(cls, value):
        """The placement ``value`` means: None, ``"auto"``, a device spec, or a
        Placement (returned as it is).

        Raises
        ------
        InvalidDeviceError
            A malformed spec (the message names it and what is allowed).
        """
        if isinstance(value, Placement):
            return value
        if value is None:
            return ANYWHERE
        if isinstance(value, str) and value.strip().lower() == "auto":
            return AUTO
        kinds = _kinds_of(value)  # (a malformed spec is named as it was given)
        return cls(tuple(value) if isinstance(value, list) else value, False, kinds)

    @property
    def shown(self):
        """The spec as the user gave it (a list shown as a list)."""
        return _shown(self.spec)

    @property
    def anywhere(self):
        """No device is ruled out (None, or ``"auto"``)."""
        return self.spec is None

    def allows_gpu(self):
        return self.kinds is None or True in self.kinds

    def allows_cpu(self):
        return self.kinds is None or False in self.kinds

    def resolve(self, among):
        """The devices of ``among`` (a backend's) this placement allows, in its order;
        None for anywhere.

        Raises
        ------
        InvalidDeviceError
            The spec names a device ``among`` lacks.
        DeviceUnavailableError
            It asks for a kind of device this machine lacks.
        """
        if self.spec is None:
            return None
        by_id = {d.id: d for d in among}
        items = self.spec if isinstance(self.spec, tuple) else (self.spec,)
        chosen = []
        for item in items:
            inside = [by_id[d.id] for d in parse_devices(item) if d.id in by_id]
            if not inside:
                has = ", ".join(str(d) for d in among)
                raise InvalidDeviceError(
                    f"Invalid placement {self.shown!r}: {item!r} is not among this "
                    f"backend's devices ({has}); give the backend devices= that include it, "
                    "or place the calls on one of those")
            chosen.extend(d for d in inside if d not in chosen)
        return tuple(chosen)

    def __repr__(self):
        return "Placement('auto')" if self.auto else f"Placement({self.shown!r})"


def _shown(spec):
    return list(spec) if isinstance(spec, tuple) else spec


ANYWHERE = Placement()
AUTO = Placement(auto=True)


def _kinds_of(spec):
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise InvalidDeviceError(f"Invalid device spec {spec!r}: the list is empty")
    kinds = {_split_spec(item, ())[0] for item in items}
    return frozenset(any(p.is_gpu for p in _platforms.platforms() if p.kind == kind)
                     for kind in kinds)


def parse_devices(spec=None):
    """Turn a device spec into this machine's devices, in the order given.

    Parameters
    ----------
    spec : None, str, int, Device or list of these
        None: every device. ``"cpu"``; ``"cuda"`` or ``"gpu"``: every GPU;
        ``"cuda:1"`` or ``1``: that GPU; a list: the union, in order, without repeats.

    Returns
    -------
    tuple of Device

    Raises
    ------
    InvalidDeviceError
        The spec is malformed or names a GPU index this machine lacks.
    DeviceUnavailableError
        The spec asks for a GPU and this machine has none.
    """
    available = devices()
    if spec is None:
        return available
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise InvalidDeviceError(f"Invalid device spec {spec!r}: the list is empty; "
                                 f"{_machine_has(available)}")
    chosen = []
    for item in items:
        chosen.extend(d for d in _parse_one(item, available) if d not in chosen)
    return tuple(chosen)


def _parse_one(item, available):
    kind, index = _split_spec(item, available)
    matches = [d for d in available if d.kind == kind and (index is None or d.index == index)]
    if matches:
        return matches
    if not any(d.kind == kind for d in available):
        reasons = "; ".join(discover().notes) or "none was found"
        raise DeviceUnavailableError(f"Device {item!r} was asked for but this machine has no "
                                     f"{kind} device ({reasons}); {_machine_has(available)} "
                                     f"{_HINT}")
    raise InvalidDeviceError(f"Invalid device {item!r}: {_machine_has(available)} {_HINT}")


def _split_spec(item, available):
    if isinstance(item, Device):
        return item.kind, item.index
    spellings = {alias: kind for kind, aliases in DEVICE_KINDS.items() for alias in aliases}
    if is_whole(item):
        return _default_gpu_kind(available), int(item)
    match = _SPEC.match(item.strip().lower()) if isinstance(item, str) else None
    if match is None or match.group(1) not in spellings:
        raise InvalidDeviceError(
            f"Invalid device spec {item!r}: expected one of {', '.join(map(repr, spellings))}, "
            f"'<kind>:<index>' such as 'cuda:0', a GPU index, a Device or a list of these; "
            f"{_machine_has(available)}")
    kind = spellings[match.group(1)]
    index = None if match.group(2) is None else int(match.group(2))
    if not _indexed(kind):
        if index not in (None, 0):
            raise InvalidDeviceError(f"Invalid device {item!r}: {kind!r} is one device; "
                                     f"{_machine_has(available)}")
        index = None
    return kind, index


def _indexed(kind):
    """Whether devices of ``kind`` are numbered (GPUs) or one (the CPU)."""
    return any(p.indexed for p in _platforms.platforms() if p.kind == kind)


def _default_gpu_kind(available):
    """The kind a bare GPU index means: that of this machine's GPUs, else the first
    registered GPU platform's."""
    return next((d.kind for d in available if d.is_gpu),
                next(p.kind for p in _platforms.platforms() if p.is_gpu))


def _machine_has(available):
    if not available:  # a spec read by kind alone
        return "the kinds are " + ", ".join(DEVICE_KINDS)
    return "this machine has " + ", ".join(str(d) for d in available)
