"""The machine's devices: the CPU, CUDA GPUs (seen through CuPy, else Numba) and
simulated GPUs; and the one function that turns a device spec into devices.

Discovery is cached per configuration (simulation settings, ``CUDA_VISIBLE_DEVICES``),
never raises because CUDA is broken or absent, and imports CuPy or Numba only when a
CUDA driver can be loaded.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import re
import sys
import threading
import warnings
from dataclasses import asdict, dataclass, field

from ._errors import DeviceDiscoveryWarning, DeviceUnavailableError, InvalidDeviceError
from ._safe_import import cpu_count
from ._utils import format_bytes, parse_bytes, warn_user

SIMULATE_GPUS_ENV = "DEVICEJOBLIB_SIMULATE_GPUS"
SIMULATED_MEMORY_ENV = "DEVICEJOBLIB_SIMULATED_MEMORY"
SIMULATED_LATENCY_ENV = "DEVICEJOBLIB_SIMULATED_LAUNCH_LATENCY"
DEFAULT_SIMULATED_MEMORY = 16 * 2**30
MAX_SIMULATED_GPUS = 64

#: The registry of device kinds: canonical name -> the spellings a spec may use.
DEVICE_KINDS = {"cpu": ("cpu",), "cuda": ("cuda", "gpu")}
_SPELLINGS = {alias: kind for kind, aliases in DEVICE_KINDS.items() for alias in aliases}
_SPEC = re.compile(r"^([a-z]+)(?::(\d+))?$")
_DRIVER_LIBRARIES = {"linux": "libcuda.so.1", "win32": "nvcuda.dll"}
_HINT = f"(set CUDA_VISIBLE_DEVICES or {SIMULATE_GPUS_ENV})"


@dataclass(frozen=True)
class Device:
    """One device of this machine, as discovered.

    Attributes
    ----------
    kind : str
        ``"cpu"`` or ``"cuda"`` (the keys of ``DEVICE_KINDS``).
    index : int or None
        CUDA device index as the process sees it (after ``CUDA_VISIBLE_DEVICES``);
        None for the CPU.
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
    simulated : bool
        True for a host-backed simulated GPU (``DEVICEJOBLIB_SIMULATE_GPUS``).
    provider : str
        Who reported it: ``"os"``, ``"cupy"``, ``"numba"`` or ``"simulator"``.
    launch_latency : float
        Seconds a simulated GPU waits per launch (a call, or a fused group of calls),
        standing for a real GPU's launch and synchronisation cost; 0 for real devices.
    """

    kind: str
    index: int | None = None
    name: str = ""
    memory_total: int | None = None
    memory_free: int | None = None
    multiprocessor_count: int | None = None
    compute_capability: tuple[int, int] | None = None
    cores: int | None = None
    simulated: bool = False
    provider: str = "os"
    launch_latency: float = 0.0

    @property
    def id(self):
        """The device's name in specs and output: ``"cpu"``, ``"cuda:0"``..."""
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def is_gpu(self):
        return self.kind == "cuda"

    def __str__(self):
        return self.id + (" (simulated)" if self.simulated else "")

    def to_dict(self):
        """The device as a JSON-ready dict (with its ``id``)."""
        return {"id": self.id, **asdict(self)}


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
        Memory of each simulated GPU (``"8GiB"``, bytes). Default: 16 GiB, or
        ``DEVICEJOBLIB_SIMULATED_MEMORY``.
    launch_latency : float, optional
        Seconds each launch waits (default 0, or
        ``DEVICEJOBLIB_SIMULATED_LAUNCH_LATENCY``), so that batching decisions can be
        seen on a CPU.

    Examples
    --------
    >>> with simulate_gpus(2):
    ...     [d.id for d in devices()]
    ['cpu', 'cuda:0', 'cuda:1']
    """

    _active = None  # (n, memory, latency) of the innermost call, or None: the environment

    def __init__(self, n, memory=None, launch_latency=None):
        n = _check_gpu_count(n, "simulate_gpus(n)")
        memory = _simulated_memory() if memory is None else parse_bytes(memory, "memory")
        latency = (_simulated_latency() if launch_latency is None
                   else _check_latency(launch_latency, "launch_latency"))
        self.n = n
        self._previous = simulate_gpus._active
        simulate_gpus._active = (n, memory, latency)

    @classmethod
    def unless_real(cls, n=None, default=2):
        """``simulate_gpus(n)``; with ``n`` None, ``default`` simulated GPUs when this
        machine has no real GPU and none when it has (benchmarks and demos use this)."""
        if n is None:
            with cls(0), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeviceDiscoveryWarning)
                n = 0 if any(d.is_gpu for d in devices()) else default
        return cls(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        simulate_gpus._active = self._previous


_cache: dict[tuple, Discovery] = {}
_cache_lock = threading.Lock()
_warned: set[str] = set()


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


def discover(refresh=False):
    """Full discovery result (devices, notes on missing GPUs, CUDA versions); cached."""
    key = (_simulation(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    with _cache_lock:
        if refresh or key not in _cache:
            if refresh:
                cpu_device.cache_clear()
            _cache[key] = _discover(*key[0])
        return _cache[key]


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
    if isinstance(item, int) and not isinstance(item, bool):
        return "cuda", item
    match = _SPEC.match(item.strip().lower()) if isinstance(item, str) else None
    if match is None or match.group(1) not in _SPELLINGS:
        spellings = ", ".join(repr(s) for s in _SPELLINGS)
        raise InvalidDeviceError(
            f"Invalid device spec {item!r}: expected one of {spellings}, "
            f"'<kind>:<index>' such as 'cuda:0', a GPU index, a Device or a list of these; "
            f"{_machine_has(available)}")
    kind = _SPELLINGS[match.group(1)]
    index = None if match.group(2) is None else int(match.group(2))
    if kind == "cpu" and index not in (None, 0):
        raise InvalidDeviceError(f"Invalid device {item!r}: the CPU is one device, 'cpu'; "
                                 f"{_machine_has(available)}")
    return kind, None if kind == "cpu" else index


def _machine_has(available):
    return "this machine has " + ", ".join(str(d) for d in available)


# --- discovery ---------------------------------------------------------------------

def _discover(n_simulated, simulated_memory, latency):
    cpu = cpu_device()
    if n_simulated:
        gpus = tuple(Device("cuda", i, name="simulated GPU", memory_total=simulated_memory,
                            memory_free=simulated_memory, multiprocessor_count=cpu.cores,
                            simulated=True, provider="simulator", launch_latency=latency)
                     for i in range(n_simulated))
        note = (f"{n_simulated} simulated GPU(s) of {format_bytes(simulated_memory)} each "
                f"({SIMULATE_GPUS_ENV} or simulate_gpus()); real GPUs are not probed")
        return Discovery((cpu, *gpus), (note,))
    gpus, notes, versions = _discover_cuda()
    return Discovery((cpu, *gpus), tuple(notes), versions)


@functools.cache
def cpu_device():
    """The CPU device alone, without probing CUDA (cached; memory read once)."""
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
    total = _sysconf("SC_PHYS_PAGES") * page if page else None
    free = _sysconf("SC_AVPHYS_PAGES") * page if page else None
    return Device("cpu", name=_cpu_model(), memory_total=total or None,
                  memory_free=free or None, cores=cpu_count())


def _sysconf(name):
    try:
        return os.sysconf(name)
    except (ValueError, OSError):
        return 0


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "CPU"


def _discover_cuda():
    """(gpus, notes, cuda_versions) from the first CUDA package that sees devices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return [], [f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"], {}
    installed = [name for name in _CUDA_PROBES if importlib.util.find_spec(name)]
    if not installed:
        return [], ["no CUDA package is installed (pip install cupy-cuda12x or "
                    "cupy-cuda13x)"], {}
    driver_error = _driver_error()
    if driver_error:
        note = f"{' and '.join(installed)} installed but no CUDA driver: {driver_error}"
        return [], [_warn_if_cupy(note, installed)], {}
    notes = []
    for name in installed:
        try:
            gpus, versions = _CUDA_PROBES[name]()
        except Exception as exc:  # a broken CUDA must never break discovery
            notes.append(f"{name} found no usable GPU: {type(exc).__name__}: {exc}")
            continue
        if gpus:
            return gpus, notes, versions
        notes.append(f"{name} sees no CUDA device")
    return [], [_warn_if_cupy("; ".join(notes), installed)], {}


def _warn_if_cupy(note, installed):
    """Warn once when CuPy (installed only for GPUs) finds none; Numba is a CPU JIT too."""
    if "cupy" in installed and note not in _warned:
        _warned.add(note)
        warn_user(f"{note}; devicejoblib runs on the CPU", DeviceDiscoveryWarning)
    return note


def _driver_error():
    """Why the CUDA driver library cannot be loaded, or None when it can."""
    library = next((lib for plat, lib in _DRIVER_LIBRARIES.items()
                    if sys.platform.startswith(plat)), None)
    if library is None:
        return f"CUDA has no driver on {sys.platform}"
    try:
        ctypes.CDLL(library)
    except OSError as exc:
        return f"{library} could not be loaded ({exc})"
    return None


def _probe_cupy():
    import cupy

    runtime = cupy.cuda.runtime
    gpus = []
    for index in range(runtime.getDeviceCount()):
        props = runtime.getDeviceProperties(index)
        # memGetInfo needs a context; creating it here is safe because loky starts
        # its workers with fork+exec, never a plain fork of this process.
        with cupy.cuda.Device(index):
            free, total = runtime.memGetInfo()
        gpus.append(Device(
            "cuda", index, name=_text(props["name"]), memory_total=total, memory_free=free,
            multiprocessor_count=props["multiProcessorCount"],
            compute_capability=(props["major"], props["minor"]), provider="cupy"))
    versions = {"provider": f"cupy {cupy.__version__}"}
    if not getattr(runtime, "is_hip", False):  # ROCm encodes its versions otherwise
        local = getattr(cupy.cuda, "get_local_runtime_version", runtime.runtimeGetVersion)
        versions.update(driver=_cuda_version(runtime.driverGetVersion()),
                        runtime=_cuda_version(local()))
    return gpus, versions


def _probe_numba():
    from numba import config, cuda

    if getattr(config, "ENABLE_CUDASIM", 0) or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        raise RuntimeError("NUMBA_ENABLE_CUDASIM=1 makes numba.cuda a simulator, not a GPU "
                           f"(use {SIMULATE_GPUS_ENV} for simulated GPUs)")
    gpus = []
    for gpu in cuda.gpus:
        with gpu:
            free, total = cuda.current_context().get_memory_info()
        gpus.append(Device(
            "cuda", gpu.id, name=_text(gpu.name), memory_total=total, memory_free=free,
            multiprocessor_count=gpu.MULTIPROCESSOR_COUNT,
            compute_capability=tuple(gpu.compute_capability), provider="numba"))
    driver = cuda.cudadrv.driver.driver.get_version()
    return gpus, {"provider": "numba", "driver": ".".join(map(str, driver))}


_CUDA_PROBES = {"cupy": _probe_cupy, "numba": _probe_numba}


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(code):
    return f"{code // 1000}.{code % 1000 // 10}"


# --- simulation settings -------------------------------------------------------------

def _simulation():
    """(n, memory, latency) of simulated GPUs from simulate_gpus(), else the environment."""
    if simulate_gpus._active is not None:
        return simulate_gpus._active
    raw = os.environ.get(SIMULATE_GPUS_ENV, "").strip()
    n = _check_gpu_count(raw, SIMULATE_GPUS_ENV) if raw else 0
    return (n, _simulated_memory(), _simulated_latency()) if n else (0, 0, 0.0)


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


def _simulated_memory():
    raw = os.environ.get(SIMULATED_MEMORY_ENV)
    return parse_bytes(raw, SIMULATED_MEMORY_ENV) if raw else DEFAULT_SIMULATED_MEMORY
