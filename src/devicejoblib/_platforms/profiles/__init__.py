"""Timing profiles of real GPUs, for simulated ones: what an array operation, a launch, a
copy and a synchronisation cost on the GPU a profile was measured on.

A profile is a small JSON file (``format``, ``version``, ``name``, ``gpu``, ``made``, and
``fields``: each field's ``value`` and the ``source`` it came from). The profiles shipped
here are named by their file (``h200``); any other is given by its path.
``devicejoblib calibrate`` measures one on a machine with a real GPU.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

FORMAT, VERSION = "devicejoblib simulated GPU profile", 1
_COUNTS = ("memory_bytes", "multiprocessor_count")
_HERE = Path(__file__).parent

#: Each field of a profile and what it means (seconds, bytes, bytes or operations per
#: second); all are required and positive.
FIELDS = {
    "host_seconds_per_operation": "host-side time an array operation costs its thread, "
                                  "holding the GIL (CuPy's Python and driver work)",
    "kernel_seconds": "the least time a kernel occupies the device",
    "device_bytes_per_second": "device memory bandwidth an element-wise kernel reaches",
    "flops_per_second": "arithmetic throughput of a large float32 matrix product",
    "host_to_device_bytes_per_second": "copies of host (pageable) arrays to the device",
    "device_to_host_bytes_per_second": "copies of device arrays to the host",
    "transfer_seconds": "the fixed cost of one host-device copy",
    "memory_bytes": "the device's memory",
    "multiprocessor_count": "streaming multiprocessors (where the launch sizer starts)",
}


@dataclass(frozen=True)
class Profile:
    """A GPU's timing profile (see :data:`FIELDS`); ``sources`` says where each value
    came from."""

    name: str
    gpu: str
    made: str
    host_seconds_per_operation: float
    kernel_seconds: float
    device_bytes_per_second: float
    flops_per_second: float
    host_to_device_bytes_per_second: float
    device_to_host_bytes_per_second: float
    transfer_seconds: float
    memory_bytes: int
    multiprocessor_count: int
    sources: tuple = ()  # ((field, source), ...)

    def to_json(self):
        """The profile as the JSON document :func:`load_profile` reads."""
        sources = dict(self.sources)
        return {"format": FORMAT, "version": VERSION, "name": self.name, "gpu": self.gpu,
                "made": self.made,
                "fields": {f: {"value": getattr(self, f), "source": sources.get(f, "")}
                           for f in FIELDS}}

    def __str__(self):
        return self.name


def shipped_profiles():
    """Names of the profiles shipped with devicejoblib."""
    return tuple(sorted(p.stem for p in _HERE.glob("*.json")))


@functools.cache
def load_profile(spec):
    """The profile ``spec`` names: a shipped profile's name (any case), or a JSON file's
    path.

    Raises
    ------
    ValueError
        No such profile, or a file that is not a valid profile (the message names the
        value, the field and what is allowed).
    """
    text = str(spec).strip()
    path = _HERE / f"{text.lower()}.json"
    if not path.is_file():
        path = Path(text).expanduser()
    if not text or not path.is_file():
        raise ValueError(f"Invalid simulated GPU profile {spec!r}: expected the name of a "
                         f"shipped profile ({', '.join(shipped_profiles())}) or the path "
                         "of a profile file (devicejoblib calibrate writes one)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"Invalid simulated GPU profile {str(path)!r}: not readable as "
                         f"JSON ({exc})") from None
    return parse_profile(document, str(path))


def parse_profile(document, where="the profile"):
    """A :class:`Profile` from its JSON document (``where`` names it in errors)."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"Invalid simulated GPU profile {where!r}: expected a JSON object "
                         f"with format {FORMAT!r}")
    if document.get("version") != VERSION:
        raise ValueError(f"Invalid simulated GPU profile {where!r}: version "
                         f"{document.get('version')!r}, this devicejoblib reads {VERSION}")
    fields = document.get("fields")
    if not isinstance(fields, dict):
        raise ValueError(f"Invalid simulated GPU profile {where!r}: expected 'fields', an "
                         "object of {field: {value, source}}")
    values, sources = {}, []
    for name in FIELDS:
        entry = fields.get(name)
        value = entry.get("value") if isinstance(entry, dict) else None
        seconds = name.endswith("seconds") or name.endswith("per_operation")
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value <= 0
                or (seconds and value > 1.0)
                or (name in _COUNTS and value != int(value))):
            allowed = ("seconds, above 0 and at most 1" if seconds
                       else "a positive whole number" if name in _COUNTS
                       else "a positive number")
            raise ValueError(f"Invalid simulated GPU profile {where!r}: field {name} is "
                             f"{value!r}, expected {allowed} ({FIELDS[name]})")
        values[name] = int(value) if name in _COUNTS else float(value)
        sources.append((name, str(entry.get("source", ""))))
    return Profile(name=str(document.get("name") or Path(where).stem),
                   gpu=str(document.get("gpu", "")), made=str(document.get("made", "")),
                   sources=tuple(sources), **values)
