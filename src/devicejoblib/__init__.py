"""devicejoblib: joblib's ``Parallel(n_jobs)(delayed(f)(x) for x in items)``, device-aware.

``from devicejoblib import Parallel, delayed`` works on every machine: joblib's own
objects when joblib is installed (``USE_JOBLIB`` is True), sequential stand-ins with the
same signatures otherwise. Importing devicejoblib imports neither CuPy nor Numba and
touches no CUDA driver; :func:`devices` discovers the CPU, CUDA GPUs and simulated GPUs
when asked.
"""

from ._devices import (
    DEVICE_KINDS,
    MAX_SIMULATED_GPUS,
    SIMULATE_GPUS_ENV,
    SIMULATED_MEMORY_ENV,
    Device,
    devices,
    parse_devices,
    simulate_gpus,
)
from ._errors import (
    DeviceDiscoveryWarning,
    DeviceUnavailableError,
    InvalidDeviceError,
    JoblibMissingWarning,
)
from ._safe_import import USE_JOBLIB, Parallel, cpu_count, delayed, parallel_config
from ._version import __version__

__all__ = [
    "DEVICE_KINDS",
    "MAX_SIMULATED_GPUS",
    "SIMULATED_MEMORY_ENV",
    "SIMULATE_GPUS_ENV",
    "USE_JOBLIB",
    "Device",
    "DeviceDiscoveryWarning",
    "DeviceUnavailableError",
    "InvalidDeviceError",
    "JoblibMissingWarning",
    "Parallel",
    "__version__",
    "cpu_count",
    "delayed",
    "devices",
    "parallel_config",
    "parse_devices",
    "simulate_gpus",
]
