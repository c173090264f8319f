"""The machine's devices: the CPU, CUDA GPUs (seen through CuPy, else Numba) and
simulated GPUs (device specs are read in :mod:`devicejoblib._specs`).

Discovery is cached per configuration (simulation settings, ``CUDA_VISIBLE_DEVICES``),
never raises because CUDA is broken or absent, and imports CuPy or Numba only when a
CUDA driver can be loaded.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from dataclasses import dataclass, field, fields

from . import _platforms
from ._errors import DeviceDiscoveryWarning
from ._platforms import HOST, Platform, get_platform
from ._platforms.profiles import load_profile, shipped_profiles
from ._utils import format_bytes, is_whole, parse_bytes, warn_once

#: The Dask resource a worker declares to say it has a GPU (``resources={"GPU": 1}``).
GPU_RESOURCE = "GPU"
SIMULATE_GPUS_ENV = "DEVICEJOBLIB_SIMULATE_GPUS"
SIMULATED_MEMORY_ENV = "DEVICEJOBLIB_SIMULATED_MEMORY"
SIMULATED_LATENCY_ENV = "DEVICEJOBLIB_SIMULATED_LAUNCH_LATENCY"
SIMULATED_LOSS_ENV = "DEVICEJOBLIB_SIMULATED_LOSS"
SIMULATED_STRICT_ENV = "DEVICEJOBLIB_SIMULATED_STRICT"
SIMULATED_PROFILE_ENV = "DEVICEJOBLIB_SIMULATED_PROFILE"
DEFAULT_SIMULATED_MEMORY = 16 * 2**30
MAX_SIMULATED_GPUS = 64



@dataclass(frozen=True)
class Device:
    """One device of this machine, as discovered.

    Attributes
    ----------
    platform : Platform
        The kind of device (host CPU, simulated GPU, CuPy or Numba GPU): everything that
        differs between kinds is asked of it. A registered platform's name is accepted.
    index : int or None
        Device index as the process sees it (after ``CUDA_VISIBLE_DEVICES``); None for
        the CPU.
    name : str
        Model name (``"NVIDIA H100 80GB HBM3"``, ``"simulated GPU"``, the CPU model).
    memory_total, memory_free : int or None
        Bytes; ``memory_free`` is read at discovery (``devices(refresh=True)`` re-reads).
    multiprocessor_count : int or None
        Streaming multiprocessors (SMs) of a GPU.
    compute_capability : tuple of int or None
        ``(major, minor)`` of a real GPU.
    cores : int or None
        CPUs this process may use (the CPU device only; cgroup and affinity aware).
    launch_latency : float
        Seconds a simulated GPU waits per launch (a call, or a fused group of calls),
        standing for a real GPU's launch and synchronisation cost; 0 for real devices.
    lose_after : int or None
        Fault injection, simulated GPUs only: each worker thread of this GPU finds it
        lost from its launch number ``lose_after + 1`` on (``DEVICEJOBLIB_SIMULATED_LOSS``).
    provider : str
        What found the device: an array library for CUDA GPUs (``"cupy"``, or
        ``"numba"`` where CuPy is missing), which is also the default library of its
        GPU implementations; else the platform's name (``"host"``, ``"simulator"``).
    strict_arrays : bool
        Simulated GPUs only: GPU implementations get arrays that refuse what CuPy
        refuses (``DEVICEJOBLIB_SIMULATED_STRICT``, default on).
    profile : str
        Simulated GPUs only: the timing profile they cost their work by (a shipped
        profile's name or a file's path; ``DEVICEJOBLIB_SIMULATED_PROFILE``), or ``""``.
    """

    platform: Platform
    index: int | None = None
    name: str = ""
    memory_total: int | None = None
    memory_free: int | None = None
    multiprocessor_count: int | None = None
    compute_capability: tuple[int, int] | None = None
    cores: int | None = None
    launch_latency: float = 0.0
    lose_after: int | None = None
    provider: str = ""
    strict_arrays: bool = True
    profile: str = ""

    def __post_init__(self):
        if isinstance(self.platform, str):
            object.__setattr__(self, "platform", get_platform(self.platform))
        if not self.provider:
            object.__setattr__(self, "provider", self.platform.name)
        if isinstance(self.compute_capability, list):
            object.__setattr__(self, "compute_capability", tuple(self.compute_capability))
        # read for every routed batch: made once
        kind = self.platform.kind
        object.__setattr__(self, "_id", kind if self.index is None else f"{kind}:{self.index}")

    @property
    def kind(self):
        """The device kind: ``"cpu"`` or ``"cuda"`` (the keys of ``DEVICE_KINDS``)."""
        return self.platform.kind

    @property
    def id(self):
        """The device's name in specs and output: ``"cpu"``, ``"cuda:0"``..."""
        return self._id

    @property
    def is_gpu(self):
        """Whether calls with a GPU implementation run on it (real or simulated)."""
        return self.platform.is_gpu

    @property
    def simulated(self):
        """True for a host-backed simulated GPU (``DEVICEJOBLIB_SIMULATE_GPUS``)."""
        return self.platform.simulated

    def __str__(self):
        if not self.simulated:
            return self.id
        if self.profile:
            return f"{self.id} (simulated, {self.timing})"
        return f"{self.id} (simulated)"

    @property
    def torch(self):
        """The ``torch.device`` of this device (imports torch): ``cuda:k`` for a CUDA
        GPU, the CPU for the CPU and for a simulated GPU (whose tensors are CPU ones)."""
        import torch

        real_gpu = self.is_gpu and not self.simulated and self.platform.kind == "cuda"
        return torch.device("cuda", self.index) if real_gpu else torch.device("cpu")

    @property
    def timing(self):
        """What a simulated GPU's figures are modelled on: ``"h200 profile"``, or ``"no
        timing profile"``; ``""`` for a real device."""
        if not self.simulated:
            return ""
        return f"{self.platform.profile_name(self.profile)} profile" if self.profile \
            else "no timing profile"

    def to_dict(self):
        """The device as a JSON-ready dict (its ``id``, ``kind``, ``is_gpu``,
        ``simulated`` and its fields, the platform by name); :meth:`from_dict` reads it
        back."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"id": self.id, "kind": self.kind, "is_gpu": self.is_gpu,
                "simulated": self.simulated, "timing": self.timing, **values,
                "platform": self.platform.name}

    @classmethod
    def from_dict(cls, data):
        """The device that :meth:`to_dict` described."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class Discovery:
    """What discovery found: the devices, why GPUs are missing, CUDA versions."""

    devices: tuple[Device, ...]
    notes: tuple[str, ...] = ()
    cuda_versions: dict = field(default_factory=dict)


class simulate_gpus:
    """Simulate ``n`` host-backed GPUs, as ``DEVICEJOBLIB_SIMULATE_GPUS=n`` does.

    Takes precedence over the environment variable. Works as a plain call (until
    changed again) or as a context manager that restores the previous setting.

    Parameters
    ----------
    n : int
        Number of simulated GPUs, 0 to ``MAX_SIMULATED_GPUS``; 0 turns simulation off
        and real GPUs are discovered again.
    memory : int or str, optional
        Memory of each simulated GPU (``"8GiB"``, bytes). Default:
        ``DEVICEJOBLIB_SIMULATED_MEMORY``, else the profile's, else 16 GiB.
    launch_latency : float, optional
        Seconds each launch waits (default 0, or
        ``DEVICEJOBLIB_SIMULATED_LAUNCH_LATENCY``), so that batching decisions can be
        seen on a CPU.
    lose_after : dict of int to int, optional
        Fault injection: GPU index -> launches after which each of its worker threads
        finds the device lost (default none, or ``DEVICEJOBLIB_SIMULATED_LOSS``, written
        ``"1:5,0:100"``).
    strict : bool, optional
        GPU implementations get arrays that refuse what CuPy refuses (implicit
        conversion to NumPy, mixing with NumPy arrays or another device's); False hands
        them NumPy arrays, for code that knowingly relies on NumPy. Default on, or
        ``DEVICEJOBLIB_SIMULATED_STRICT`` (``0`` turns it off).
    profile : str, optional
        A real GPU's timing profile (a shipped profile's name, such as ``"h200"``, or
        a file ``devicejoblib calibrate`` wrote): each array operation then costs its
        worker thread the profile's host time, holding the GIL, and the device its
        device time on a clock of its own. Default none, or
        ``DEVICEJOBLIB_SIMULATED_PROFILE``.

    Examples
    --------
    >>> with simulate_gpus(2):
    ...     [d.id for d in devices()]
    ['cpu', 'cuda:0', 'cuda:1']
    """

    _active = None  # the settings of the innermost call, or None: the environment

    def __init__(self, n, memory=None, launch_latency=None, lose_after=None, strict=None,
                 profile=None):
        n = _check_gpu_count(n, "simulate_gpus(n)")
        profile = (_simulated_profile() if profile is None
                   else _check_profile(profile, "profile"))
        memory = (_simulated_memory(profile) if memory is None
                  else _check_memory(memory, "memory"))
        latency = (_simulated_latency() if launch_latency is None
                   else _check_latency(launch_latency, "launch_latency"))
        loss = (_simulated_loss(n) if lose_after is None
                else _check_loss(lose_after, n, "lose_after"))
        strict = _simulated_strict() if strict is None else _check_strict(strict, "strict")
        self.n = n
        self._previous = simulate_gpus._active
        simulate_gpus._active = (n, memory, latency, loss, strict, profile)

    @classmethod
    def unless_real(cls, n=None, default=2):
        """``simulate_gpus(n)``; with ``n`` None, what ``DEVICEJOBLIB_SIMULATE_GPUS``
        asks for where it is set, else ``default`` simulated GPUs when this machine has
        no real GPU and none when it has (benchmarks and demos use this)."""
        raw = os.environ.get(SIMULATE_GPUS_ENV, "").strip()
        if n is None and raw:
            n = _check_gpu_count(raw, SIMULATE_GPUS_ENV)
        elif n is None:
            n = 0 if is_available(simulated=False) else default
        return cls(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        simulate_gpus._active = self._previous


_NO_SIMULATION = (0, 0, 0.0, (), True, "")
_cache: dict[tuple, Discovery] = {}
_cache_lock = threading.Lock()


def devices(refresh=False):
    """The devices of this machine: the CPU first, then one entry per GPU.

    GPUs are simulated ones when ``DEVICEJOBLIB_SIMULATE_GPUS`` (or
    :func:`simulate_gpus`) asks for them, else the CUDA devices seen by CuPy, else by
    Numba. Never raises because CUDA is missing or broken: a ``DeviceDiscoveryWarning``
    says why once, and only the CPU is returned.

    Parameters
    ----------
    refresh : bool
        Discover again (re-reading free memory) instead of using the cached result.

    Returns
    -------
    tuple of Device
    """
    return discover(refresh).devices


def discover(refresh=False, simulation=None):
    """Full discovery result (devices, notes on missing GPUs, CUDA versions); cached.

    ``simulation``: ``(n, memory, latency)`` of simulated GPUs instead of the current
    setting (``(0, 0, 0.0)``: real devices only).
    """
    simulation = _simulation() if simulation is None else simulation
    key = (simulation, os.environ.get("CUDA_VISIBLE_DEVICES"), _platforms.generation)
    with _cache_lock:
        if refresh or key not in _cache:
            if refresh:
                cpu_device.cache_clear()
            _cache[key] = _discover(*key[0])
        return _cache[key]


def is_available(kind="cuda", simulated=True):
    """Whether this machine has a usable device of ``kind``; cached, never raises.

    Parameters
    ----------
    kind : str
        A device kind (a key of ``DEVICE_KINDS``).
    simulated : bool
        Count simulated GPUs (when simulation is on); False asks about real devices only.

    Returns
    -------
    bool
    """
    try:
        with warnings.catch_warnings():
            if not simulated:
                warnings.simplefilter("ignore", DeviceDiscoveryWarning)
            found = discover(simulation=None if simulated else _NO_SIMULATION).devices
    except Exception:  # a malformed setting: the error belongs to devices(), not here
        return False
    return any(d.kind == kind for d in found)


# --- discovery ---------------------------------------------------------------------

def _discover(n_simulated, simulated_memory, latency, loss, strict, profile):
    cpu = cpu_device()
    if n_simulated:
        simulated = []
        for platform in (p for p in _platforms.platforms() if p.simulated):
            found, _ = platform.probe(count=n_simulated, memory=simulated_memory,
                                      latency=latency, multiprocessors=cpu.cores,
                                      lose_after=dict(loss), strict=strict, profile=profile)
            simulated.extend(Device(platform, **props) for props in found)
        timing = f"the {profile} profile's timing" if profile else "no timing profile"
        note = (f"{n_simulated} simulated GPU(s) of {format_bytes(simulated_memory)} each, "
                f"{timing}, {'strict' if strict else 'NumPy'} arrays ({SIMULATE_GPUS_ENV} "
                "or simulate_gpus()); real GPUs are not probed")
        return Discovery((cpu, *simulated), (note,))
    gpus, notes, versions = _discover_real()
    return Discovery((cpu, *gpus), tuple(notes), versions)


@functools.cache
def cpu_device():
    """The CPU device alone, without probing GPUs (cached; memory read once)."""
    (props,), _ = HOST.probe()
    return Device(HOST, **props)


def _discover_real():
    """(devices, notes, versions) from the first platform of real GPUs whose prober (for
    CUDA, an array library: CuPy, then Numba) sees some."""
    candidates = [(platform, prober) for platform in _platforms.platforms()
                  if platform.is_gpu and not platform.simulated
                  for prober in platform.probers()]
    installed = [(platform, prober) for platform, prober in candidates if prober.installed()]
    if not installed:
        packages = " or ".join(p.package for _, p in candidates if p.package)
        return [], [f"no GPU package is installed ({packages}; pip install cupy-cuda12x "
                    "or cupy-cuda13x)"], {}
    unusable, hidden = {}, []  # reason -> probers; reasons the user chose
    for platform, prober in installed:
        reason = platform.hidden_by_user()
        if reason is not None:
            hidden.append(reason)
            continue
        reason = prober.unavailable_reason() or (
            None if prober is platform else platform.unavailable_reason())
        if reason is None:
            try:
                found, versions = prober.probe()
            except Exception as exc:  # a broken CUDA must never break discovery
                reason = f"found no usable GPU: {type(exc).__name__}: {exc}"
            else:
                if found:
                    return [Device(platform, **{"provider": prober.name, **props})
                            for props in found], [], versions
                reason = f"sees no {platform.kind} device"
        unusable.setdefault(reason, []).append(prober)
    notes = list(dict.fromkeys(hidden)) + [
        f"{' and '.join(p.package for p in group)} {reason}"
        for reason, group in unusable.items()]
    note = "; ".join(notes)
    if any(p.warn_when_unusable for group in unusable.values() for p in group):
        warn_once(f"{note}; devicejoblib runs on the CPU", DeviceDiscoveryWarning)
    return [], [note], {}


# --- simulation settings -------------------------------------------------------------

def _simulation():
    """(n, memory, latency) of simulated GPUs from simulate_gpus(), else the environment."""
    if simulate_gpus._active is not None:
        return simulate_gpus._active if simulate_gpus._active[0] else _NO_SIMULATION
    raw = os.environ.get(SIMULATE_GPUS_ENV, "").strip()
    n = _check_gpu_count(raw, SIMULATE_GPUS_ENV) if raw else 0
    if not n:
        return _NO_SIMULATION
    profile = _simulated_profile()
    return (n, _simulated_memory(profile), _simulated_latency(), _simulated_loss(n),
            _simulated_strict(), profile)


def _check_gpu_count(value, name):
    try:
        n = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    except ValueError:
        n = None
    if n is None or not 0 <= n <= MAX_SIMULATED_GPUS:
        raise ValueError(f"Invalid {name}={value!r}: expected a whole number of simulated "
                         f"GPUs from 0 (off) to {MAX_SIMULATED_GPUS}, such as 2")
    return n


def _check_latency(value, name):
    try:
        latency = float(value)
    except (TypeError, ValueError):
        latency = -1.0
    if isinstance(value, bool) or not 0.0 <= latency <= 1.0:
        raise ValueError(f"Invalid {name}={value!r}: expected seconds per launch from 0 to "
                         "1, such as 2e-5")
    return latency


def _simulated_latency():
    raw = os.environ.get(SIMULATED_LATENCY_ENV)
    return _check_latency(raw, SIMULATED_LATENCY_ENV) if raw else 0.0


def _simulated_memory(profile=""):
    raw = os.environ.get(SIMULATED_MEMORY_ENV)
    if raw:
        return _check_memory(raw, SIMULATED_MEMORY_ENV)
    return load_profile(profile).memory_bytes if profile else DEFAULT_SIMULATED_MEMORY


def _check_strict(value, name):
    words = {"1": True, "true": True, "on": True, "yes": True,
             "0": False, "false": False, "off": False, "no": False}
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise ValueError(f"Invalid {name}={value!r}: expected True or False (in the "
                     "environment 1/0, true/false, on/off)")


def _simulated_strict():
    raw = os.environ.get(SIMULATED_STRICT_ENV, "").strip()
    return _check_strict(raw, SIMULATED_STRICT_ENV) if raw else True


def _check_profile(value, name):
    """A profile setting as the string devices carry ("" for none), checked by loading
    it (a ValueError names the value)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in
                         ("", "none", "off")):
        return ""
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"Invalid {name}={value!r}: expected a shipped profile's name "
                         f"({', '.join(shipped_profiles())}) or a profile file's path")
    try:
        load_profile(os.fspath(value))
    except ValueError as exc:
        raise ValueError(f"Invalid {name}: {exc}") from None
    return os.fspath(value).strip()


def _simulated_profile():
    return _check_profile(os.environ.get(SIMULATED_PROFILE_ENV), SIMULATED_PROFILE_ENV)


def _simulated_loss(n):
    raw = os.environ.get(SIMULATED_LOSS_ENV, "").strip()
    if not raw:
        return ()
    try:
        pairs = dict(tuple(int(x) for x in part.split(":")) for part in raw.split(","))
    except ValueError:
        pairs = None
    return _check_loss(pairs, n, SIMULATED_LOSS_ENV, raw)


def _check_loss(lose_after, n, name, shown=None):
    """``{GPU index: launches}`` as sorted pairs, each index a simulated GPU's."""
    pairs = lose_after.items() if isinstance(lose_after, dict) else None
    if pairs is None or not all(is_whole(i) and 0 <= i < n and is_whole(k) and k >= 0
                                for i, k in pairs):
        raise ValueError(f"Invalid {name}={lose_after if shown is None else shown!r}: "
                         f"expected GPU index -> launches before it is lost, such as "
                         f"{{1: 5}} ('1:5'), indices from 0 to {n - 1}")
    return tuple(sorted((int(i), int(k)) for i, k in pairs))


MIN_SIMULATED_MEMORY, MAX_SIMULATED_MEMORY = 2**10, 2**50


def _check_memory(value, name):
    """Bytes of a simulated GPU: from 1 KiB to 1 PiB."""
    memory = parse_bytes(value, name)
    if not MIN_SIMULATED_MEMORY <= memory <= MAX_SIMULATED_MEMORY:
        raise ValueError(f"Invalid {name}={value!r}: {format_bytes(memory)} is outside "
                         "what a simulated GPU may have, 1 KiB to 1 PiB (such as '16GiB')")
    return memory
