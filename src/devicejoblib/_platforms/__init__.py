"""Platforms: one object per kind of device, and the registry they are found in.

Everything that differs between the host CPU, a simulated GPU and a CUDA GPU lives in
its :class:`Platform`; the rest of devicejoblib asks a device's platform. How arrays
live on a device is the other axis, array libraries (:mod:`devicejoblib.arrays`). The
registry, like threadpoolctl's list of controllers, is where valid device kinds, their
spellings in specs and the order of discovery come from.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from ..arrays import register_array_library
from .base import CPU_IMPLEMENTATION, GPU_IMPLEMENTATION, IMPLEMENTATIONS, REGISTERED, Platform
from .cuda import CUDAPlatform
from .host import HOST_THREADS, HostPlatform
from .simulated import SIMULATED_ARRAYS, SimulatedGPUPlatform

_PLATFORMS = REGISTERED  # (kept in base: unpickling a platform looks it up)
_lock = threading.Lock()
generation = 0  # bumped by register(): discovery caches are keyed by it


def register(platform):
    """Add a platform (an instance of a :class:`Platform` subclass) to the registry.

    Platforms of real devices are probed in registration order; the first that finds
    devices provides the machine's GPUs. Registering a name again replaces that platform.

    Parameters
    ----------
    platform : Platform

    Returns
    -------
    Platform
        ``platform``, so that ``HOST = register(HostPlatform())`` reads naturally.

    Raises
    ------
    TypeError
        ``platform`` is not a Platform instance.
    ValueError
        Its ``name``, ``kind``, ``spellings`` or ``runs`` are missing or clash.
    """
    if not isinstance(platform, Platform):
        raise TypeError(f"Invalid platform {platform!r}: expected an instance of a "
                        "devicejoblib.Platform subclass")
    _check_fields(platform)
    global generation
    with _lock:
        _PLATFORMS[platform.name] = platform
        generation += 1
    return platform


def _check_fields(platform):
    if not platform.name or not platform.kind or not platform.spellings:
        raise ValueError(f"Invalid platform {platform!r}: name, kind and spellings must be "
                         "set")
    if platform.runs not in IMPLEMENTATIONS:
        raise ValueError(f"Invalid platform {platform.name!r}: runs={platform.runs!r}, "
                         f"expected one of {', '.join(map(repr, IMPLEMENTATIONS))} (which "
                         "implementation of a kernel)")
    for other in _PLATFORMS.values():
        shared = set(other.spellings) & set(platform.spellings)
        if other.name != platform.name and shared and other.kind != platform.kind:
            raise ValueError(f"Invalid platform {platform.name!r}: spellings "
                             f"{sorted(shared)} already mean {other.kind!r}")


def platforms():
    """The registered platforms.

    Returns
    -------
    tuple of Platform
        In registration order, which is the order platforms of real GPUs are probed in.
    """
    return tuple(_PLATFORMS.values())


def get_platform(name):
    """The registered platform called ``name``.

    Parameters
    ----------
    name : str
        ``"host"``, ``"simulator"``, ``"cuda"`` or a registered one's.

    Returns
    -------
    Platform

    Raises
    ------
    ValueError
        No platform of that name is registered; the message lists those that are.
    """
    try:
        return _PLATFORMS[name]
    except KeyError:
        raise ValueError(f"Invalid platform {name!r}: registered platforms are "
                         f"{', '.join(map(repr, _PLATFORMS))}") from None


class _DeviceKinds(Mapping):
    """Device kind -> the spellings a device spec may use, derived from the registry."""

    def _kinds(self):
        kinds = {}
        for platform in _PLATFORMS.values():
            spellings = kinds.setdefault(platform.kind, [])
            spellings.extend(s for s in platform.spellings if s not in spellings)
        return {kind: tuple(spellings) for kind, spellings in kinds.items()}

    def __getitem__(self, kind):
        return self._kinds()[kind]

    def __iter__(self):
        return iter(self._kinds())

    def __len__(self):
        return len(self._kinds())

    def __repr__(self):
        return repr(self._kinds())


#: Device kind -> the spellings a device spec may use (``{"cpu": ("cpu",), "cuda":
#: ("cuda", "gpu")}``), derived from the registered platforms.
DEVICE_KINDS = _DeviceKinds()

HOST = register(HostPlatform())
SIMULATOR = register(SimulatedGPUPlatform())
register(CUDAPlatform())
register_array_library(SIMULATED_ARRAYS)


__all__ = [
    "CPU_IMPLEMENTATION",
    "DEVICE_KINDS",
    "GPU_IMPLEMENTATION",
    "HOST",
    "HOST_THREADS",
    "IMPLEMENTATIONS",
    "SIMULATOR",
    "CUDAPlatform",
    "HostPlatform",
    "Platform",
    "SimulatedGPUPlatform",
    "get_platform",
    "platforms",
    "register",
]
