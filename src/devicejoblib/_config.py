"""Every argument of the device backend, validated once, field by field, into one frozen
value; each component is handed the settings it needs from it."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from ._specs import ANYWHERE, Placement, parse_devices
from ._utils import check_count, check_flag, check_n_jobs

#: How CPU calls run: loky worker processes, or threads.
CPU_BACKENDS = ("loky", "threading")
#: The backend's own arguments (the rest go to loky).
OWN_PARAMETERS = ("devices", "placement", "cpu_backend", "n_cpu_jobs", "keep_on_device",
                  "max_batch_size", "client", "retries", "wait_for_workers_timeout", "trace",
                  "progress")


@dataclass(frozen=True)
class BackendConfig:
    """The device backend's settings (see :class:`~devicejoblib.DeviceBackend` for what
    each means). Made by :meth:`from_arguments`, which names the field, the value and
    what is allowed for any that is invalid."""

    devices: tuple = ()
    placement: Placement = ANYWHERE
    cpu_backend: str = "loky"
    n_cpu_jobs: int | None = None
    keep_on_device: bool = False
    max_batch_size: int | None = None
    client: object = None
    retries: int = 0
    wait_for_workers_timeout: float = 10.0
    trace: Path | None = None
    progress: bool = False

    @classmethod
    def from_arguments(cls, devices=None, placement=None, cpu_backend="loky",
                       n_cpu_jobs=None, keep_on_device=False, max_batch_size=None,
                       client=None, retries=0, wait_for_workers_timeout=10.0, trace=None,
                       progress=False, **loky_kwargs):
        """The configuration these arguments (the backend's) ask for; ``loky_kwargs``
        are only checked for misspelt backend arguments (joblib hands them to loky).

        Raises
        ------
        ValueError, TypeError, InvalidDeviceError, DeviceUnavailableError
            A field's value is invalid, alone or with ``client=``.
        """
        if cpu_backend not in CPU_BACKENDS:
            raise ValueError(f"Invalid cpu_backend={cpu_backend!r}: expected one of "
                             f"{', '.join(map(repr, CPU_BACKENDS))}")
        _refuse_misspelt(loky_kwargs)
        values = {
            "placement": Placement.parse(placement),
            "cpu_backend": cpu_backend,
            "n_cpu_jobs": check_n_jobs("n_cpu_jobs", n_cpu_jobs),
            "keep_on_device": check_flag("keep_on_device", keep_on_device),
            "progress": check_flag("progress", progress),
            "trace": _trace_path(trace),
            "max_batch_size": check_count("max_batch_size", max_batch_size,
                                          allow_none=True),
        }
        if client is None:
            if retries != 0:
                raise ValueError(f"Invalid retries={retries!r} without client=: retries "
                                 "apply to the parts a Dask cluster runs")
            values["devices"] = parse_devices(devices)
        else:
            values.update(_cluster_values(client, devices, retries, wait_for_workers_timeout,
                                          values))
        return cls(**values)

    @property
    def on_cluster(self):
        return self.client is not None


def _trace_path(trace):
    if trace is None:
        return None
    if not isinstance(trace, (str, os.PathLike)):
        raise TypeError(f"Invalid trace={trace!r}: expected a file path or None")
    if not os.fspath(trace).strip():
        raise ValueError(f"Invalid trace={trace!r}: expected a file path (or None: no "
                         "trace)")
    try:
        path = Path(trace).expanduser()
    except RuntimeError as exc:
        raise ValueError(f"Invalid trace={trace!r}: {exc}") from None
    if path.is_dir():
        raise ValueError(f"Invalid trace={trace!r}: a folder; expected a file path in one, "
                         f"such as {str(path / 'trace.json')!r}")
    if not path.parent.is_dir():
        raise ValueError(f"Invalid trace={trace!r}: its folder {str(path.parent)!r} does "
                         "not exist")
    return path


def _cluster_values(client, devices, retries, wait, values):
    """The fields that differ on a Dask cluster, checked against the others."""
    from .executors.dask_client import resolve_client

    if devices is not None:
        raise ValueError(f"Invalid devices={devices!r} with client=: a Dask cluster's "
                         "devices are its workers'; use placement= to choose kinds")
    for name, default in (("cpu_backend", "loky"), ("n_cpu_jobs", None)):
        if values[name] != default:
            raise ValueError(f"Invalid {name}={values[name]!r} with client=: CPU calls run "
                             "on the cluster's workers, one per worker thread")
    if values["keep_on_device"]:
        raise ValueError("Invalid keep_on_device=True with client=: results of a Dask "
                         "cluster come back to this process as host arrays")
    if values["placement"].auto:
        raise ValueError("Invalid placement='auto' with client=: learned placement "
                         "runs on one machine only for now; on a cluster, calls are "
                         "placed by kind ('gpu', 'cpu') and capability")
    retries = check_count("retries", retries, minimum=0)
    if not (isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait >= 0):
        raise ValueError(f"Invalid wait_for_workers_timeout={wait!r}: expected seconds, "
                         "a number >= 0")
    return {"client": resolve_client(client), "retries": retries,
            "wait_for_workers_timeout": float(wait)}


def _refuse_misspelt(loky_kwargs):
    """A keyword close to one of the backend's own is a typo, not an option for loky
    (where the others go)."""
    for name in loky_kwargs:
        close = difflib.get_close_matches(name, OWN_PARAMETERS, n=1, cutoff=0.75)
        if close:
            raise TypeError(f"Invalid argument {name}={loky_kwargs[name]!r} for the "
                            f"device backend: did you mean {close[0]}=? Its arguments are "
                            f"{', '.join(OWN_PARAMETERS)}")
