"""Exceptions and warnings raised by devicejoblib."""


class InvalidDeviceError(ValueError):
    """A device spec that is not well formed, or names a device this machine lacks."""


class DeviceUnavailableError(RuntimeError):
    """A GPU was asked for explicitly but this machine has none usable."""


class DeviceDiscoveryWarning(RuntimeWarning):
    """CUDA looked present (a package or driver) but no usable device was found."""


class JoblibMissingWarning(UserWarning):
    """joblib is not importable: ``Parallel`` runs calls sequentially."""
