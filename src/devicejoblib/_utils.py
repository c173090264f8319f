"""Small helpers shared by several modules: checks of counts and byte sizes, and
warnings aimed at user code."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import numbers
import os
import re
import sys
import threading
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _joblib_dir():
    spec = importlib.util.find_spec("joblib")
    return os.path.dirname(spec.origin) if spec and spec.origin else _PACKAGE_DIR


_INTERNAL_DIRS = (_PACKAGE_DIR + os.sep, _joblib_dir() + os.sep)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def is_whole(value):
    """Whether ``value`` is an integer (Python's or NumPy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_count(name, value, minimum=1, allow_none=False):
    """``value`` as an int when it is a whole number >= ``minimum`` (or None when
    allowed); otherwise a ValueError naming ``name`` and what is allowed."""
    if (value is None and allow_none) or (is_whole(value) and value >= minimum):
        return value if value is None else int(value)
    allowed = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise ValueError(f"Invalid {name}={value!r}: expected {allowed}"
                     + (" or None" if allow_none else ""))


def check_flag(name, value):
    """``value`` when it is True or False (NumPy's too); otherwise a ValueError naming
    ``name``: a truthy string such as ``"no"`` must not pass for True."""
    if isinstance(value, bool) or (type(value).__module__ == "numpy"
                                   and type(value).__name__ in ("bool", "bool_")):
        return bool(value)
    raise ValueError(f"Invalid {name}={value!r}: expected True or False")


def check_callable(name, value, expected="a function"):
    """``value`` when it is callable; otherwise a TypeError naming ``name``."""
    if callable(value):
        return value
    raise TypeError(f"Invalid {name} {value!r}: expected {expected}")


def check_n_jobs(name, value):
    """``value`` when it is None or a non-zero integer (joblib's ``n_jobs``: -1 for all
    CPUs); otherwise a ValueError naming ``name``."""
    if value is None or (is_whole(value) and value != 0):
        return value
    raise ValueError(f"Invalid {name}={value!r}: expected a non-zero integer "
                     "(-1 for all CPUs) or None")


def parse_bytes(value, name="size"):
    """Bytes from an int or a string such as ``"512M"``, ``"16GiB"`` or ``"2GB"``.

    ``K``, ``M``, ``G``, ``T`` alone or with ``iB`` are powers of 1024 (as joblib's
    ``max_nbytes``); with ``B`` alone (``"2GB"``) they are powers of 1000.
    """
    if is_whole(value) and value > 0:
        return int(value)
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"Invalid {name} {value!r}: expected a positive number of bytes "
                         "or a string such as '512M', '16GiB' or '2GB'")
    number, prefix, binary, byte = match.groups()
    base = 1000 if byte and not binary and prefix else 1024
    return int(float(number) * base ** _POWERS[prefix.lower()])


def array_nbytes(array):
    """An array's bytes, 0 where unknown (a lazy array's NaN, a stand-in's None)."""
    try:
        nbytes = float(array.nbytes)
    except (TypeError, ValueError):
        return 0
    return int(nbytes) if math.isfinite(nbytes) else 0


def format_bytes(n):
    """``n`` bytes as a short human-readable string (``"16.0 GiB"``); ``"-"`` for None."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} TiB"


def write_json_atomically(path, data):
    """Write ``data`` as JSON to ``path`` (a Path) atomically: a temporary file beside
    it, then a rename; the temporary file is removed if that fails."""
    import json
    import tempfile

    fd, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def warn_user(message, category):
    """Warn with the first frame outside devicejoblib and joblib as the warning's location."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


_warned = set()
_warned_lock = threading.Lock()


def warn_once(message, category, key=None):
    """:func:`warn_user` once per process for each ``key`` (default: the message)."""
    key = (category, message if key is None else key)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    warn_user(message, category)


def guarded_timer(start, *args):
    """The timer ``start(*args)`` returns (a function giving seconds), made so that a
    failing one (a registered platform's) costs a measurement, never a call's result:
    it gives None instead of raising."""
    try:
        stop = start(*args)
    except Exception:
        return lambda: None

    def read():
        try:
            return stop()
        except Exception:
            return None

    return read
