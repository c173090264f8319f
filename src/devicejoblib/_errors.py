"""Exceptions and warnings raised by devicejoblib."""

from concurrent.futures import BrokenExecutor


class InvalidDeviceError(ValueError):
    """A device spec that is not well formed, or names a device this machine lacks."""


class DeviceUnavailableError(RuntimeError):
    """A GPU was asked for explicitly but this machine has none usable."""


class BrokenDeviceError(BrokenExecutor):
    """A device's worker cannot run calls (binding it to its device failed, the device
    was lost); the device is named and the underlying error chained as the cause."""


class GPUWorkerLostError(BrokenDeviceError):
    """Every GPU of a Dask worker is lost: raised there, handled by the client, which
    sends that worker's GPU parts to the other GPU workers."""

    def __init__(self, message, address):
        super().__init__(message, address)
        self.address = address

    def __str__(self):
        return self.args[0]


class ClusterLostError(RuntimeError):
    """The connection to the Dask scheduler was lost while calls ran on the cluster."""


class WorkerTraceback(Exception):
    """The traceback of an error raised on a GPU's worker thread, kept as the error's
    ``__cause__`` (joblib drops the error's own traceback; loky keeps its workers' the
    same way), so that the user's frames are shown."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return self.text


def with_worker_traceback(error):
    """``error``, with its traceback (formatted now, in the worker) as its cause unless it
    already has one."""
    if error.__cause__ is None and error.__traceback__ is not None:
        import traceback

        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        error.__cause__ = WorkerTraceback(f'\n"""\n{text}"""')
    return error


class DeviceDiscoveryWarning(RuntimeWarning):
    """CUDA looked present (a package or driver) but no usable device was found."""


class JoblibMissingWarning(UserWarning):
    """joblib is not importable: ``Parallel`` runs calls sequentially."""
