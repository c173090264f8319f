"""devicejoblib: joblib's ``Parallel(n_jobs)(delayed(f)(x) for x in items)``, device-aware.

``from devicejoblib import Parallel, delayed`` works on every machine: joblib's own
objects when joblib is installed (``USE_JOBLIB`` is True), sequential stand-ins with the
same signatures otherwise. Importing devicejoblib imports neither CuPy nor Numba and
touches no CUDA driver; :func:`devices` discovers the CPU, CUDA GPUs and simulated GPUs
when asked.
"""

from ._context import array_module, current_device, numba_cuda_lock
from ._devices import (
    MAX_SIMULATED_GPUS,
    SIMULATE_GPUS_ENV,
    SIMULATED_LATENCY_ENV,
    SIMULATED_LOSS_ENV,
    SIMULATED_MEMORY_ENV,
    SIMULATED_PROFILE_ENV,
    SIMULATED_STRICT_ENV,
    Device,
    devices,
    is_available,
    simulate_gpus,
)
from ._errors import (
    BrokenDeviceError,
    ClusterLostError,
    DeviceDiscoveryWarning,
    DeviceUnavailableError,
    InvalidDeviceError,
    JoblibMissingWarning,
)
from ._kernels import Kernel, kernel
from ._platforms import DEVICE_KINDS, Platform, get_platform, platforms, register
from ._platforms.simulated import SimulatedDeviceLost, SimulatedOutOfMemory
from ._safe_import import USE_JOBLIB, Parallel, cpu_count, delayed, parallel_config
from ._specs import parse_devices
from ._version import __version__
from .arrays import (
    ArrayLibrary,
    array_libraries,
    array_types_changed,
    get_array_library,
    register_array_library,
)

_LAZY = {"DeviceBackend": "._backend", "SimulatedDeviceArray": "._platforms.simulated_arrays",
         "simulated_cluster": ".testing", "testing": ".testing"}


def __getattr__(name):
    # NumPy and joblib's backend machinery load only when these names are used.
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        return module if name == "testing" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make_device_backend(**kwargs):
    from ._backend import DeviceBackend

    return DeviceBackend(**kwargs)


if USE_JOBLIB:
    from joblib import register_parallel_backend

    register_parallel_backend("device", _make_device_backend)

__all__ = [
    "DEVICE_KINDS",
    "MAX_SIMULATED_GPUS",
    "SIMULATED_LATENCY_ENV",
    "SIMULATED_LOSS_ENV",
    "SIMULATED_MEMORY_ENV",
    "SIMULATED_PROFILE_ENV",
    "SIMULATED_STRICT_ENV",
    "SIMULATE_GPUS_ENV",
    "USE_JOBLIB",
    "ArrayLibrary",
    "BrokenDeviceError",
    "ClusterLostError",
    "Device",
    "DeviceBackend",
    "DeviceDiscoveryWarning",
    "DeviceUnavailableError",
    "InvalidDeviceError",
    "JoblibMissingWarning",
    "Kernel",
    "Parallel",
    "Platform",
    "SimulatedDeviceArray",
    "SimulatedDeviceLost",
    "SimulatedOutOfMemory",
    "__version__",
    "array_libraries",
    "array_module",
    "array_types_changed",
    "cpu_count",
    "current_device",
    "delayed",
    "devices",
    "get_array_library",
    "get_platform",
    "is_available",
    "kernel",
    "numba_cuda_lock",
    "parallel_config",
    "parse_devices",
    "platforms",
    "register",
    "register_array_library",
    "simulate_gpus",
    "simulated_cluster",
]
