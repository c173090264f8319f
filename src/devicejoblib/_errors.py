"""Exceptions and warnings raised by devicejoblib."""

from concurrent.futures import BrokenExecutor


class InvalidDeviceError(ValueError):
    """A device spec that is not well formed, or names a device this machine lacks."""


class DeviceUnavailableError(RuntimeError):
    """A GPU was asked for explicitly but this machine has none usable."""


class BrokenDeviceError(BrokenExecutor):
    """A device's worker cannot run calls (binding it to its device failed, the device
    was lost); the device is named and the underlying error chained as the cause."""


class DeviceDiscoveryWarning(RuntimeWarning):
    """CUDA looked present (a package or driver) but no usable device was found."""


class JoblibMissingWarning(UserWarning):
    """joblib is not importable: ``Parallel`` runs calls sequentially."""
