"""Sequential stand-ins for joblib's ``Parallel``, ``delayed``, ``parallel_config``
and ``cpu_count``, used when joblib cannot be imported.

They accept joblib's arguments, validate them as joblib does, and run every call in
the calling thread, in order. Results are the ones joblib gives with ``n_jobs=1``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import threading
import time
from math import floor, log10, sqrt

from ._errors import JoblibMissingWarning
from ._utils import check_n_jobs, is_whole, warn_once

_BACKENDS = ("loky", "threading", "multiprocessing", "sequential", "device")
_RETURN_AS = ("list", "generator", "generator_unordered")
_PREFER = (None, "processes", "threads")
_REQUIRE = (None, "sharedmem")
_PRE_DISPATCH = re.compile(
    r"^\s*(?:all|\d+(?:\.\d+)?(?:\s*\*\s*n_jobs)?|(?:\d+(?:\.\d+)?\s*\*\s*)?n_jobs)\s*$"
)
_INSTALL_HINT = "install it with `pip install joblib` to run calls in parallel"

_config = threading.local()


def cpu_count(only_physical_cores=False):
    """Number of CPUs this process may use (affinity-aware where the OS says).

    ``only_physical_cores`` is accepted for joblib compatibility; without joblib the
    logical count is returned.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def delayed(function, check_pickle=None):
    """Capture ``function`` and its arguments as a ``(function, args, kwargs)`` tuple.

    ``check_pickle`` is accepted and ignored, as in joblib.
    """

    def delayed_function(*args, **kwargs):
        return function, args, kwargs

    # some callables (e.g. functools.partial) have no __name__ to copy
    with contextlib.suppress(AttributeError):
        delayed_function = functools.wraps(function)(delayed_function)
    return delayed_function


def _current_config():
    return getattr(_config, "stack", [{}])[-1]


class parallel_config:
    """Set defaults (``n_jobs``, ``verbose``, ``backend``...) for ``Parallel`` calls.

    Usable as a context manager or as a plain call that sets the defaults for the
    current thread, like joblib's.
    """

    def __init__(self, backend=None, *, n_jobs=None, verbose=None, prefer=None,
                 require=None, **backend_params):
        if backend is not None:
            _check_backend(backend)
        _check_choice("prefer", prefer, _PREFER)
        _check_choice("require", require, _REQUIRE)
        check_n_jobs("n_jobs", n_jobs)
        new = dict(_current_config())
        given = {"backend": backend, "n_jobs": n_jobs, "verbose": verbose,
                 "prefer": prefer, "require": require}
        new.update({k: v for k, v in given.items() if v is not None})
        self._stack = getattr(_config, "stack", None) or [{}]
        _config.stack = [*self._stack, new]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        _config.stack = self._stack


class Parallel:
    """Sequential stand-in for :class:`joblib.Parallel` (joblib is not installed).

    Takes joblib's arguments, validates them, and runs the delayed calls one after
    the other in the calling thread. ``return_as`` may be ``"list"``,
    ``"generator"`` or ``"generator_unordered"`` (the latter yields in order).
    ``verbose`` prints joblib's progress lines.
    """

    def __init__(self, n_jobs=None, backend=None, return_as="list", verbose=None,
                 timeout=None, pre_dispatch="2 * n_jobs", batch_size="auto",
                 temp_folder=None, max_nbytes="1M", mmap_mode="r", prefer=None,
                 require=None):
        _warn_missing_joblib()
        config = _current_config()
        self.n_jobs = config.get("n_jobs", 1) if n_jobs is None else n_jobs
        check_n_jobs("n_jobs", self.n_jobs)
        if backend is not None:
            _check_backend(backend)
        _check_choice("return_as", return_as, _RETURN_AS)
        _check_choice("prefer", prefer, _PREFER)
        _check_choice("require", require, _REQUIRE)
        _check_batch_size(batch_size)
        _check_pre_dispatch(pre_dispatch)
        self.backend = backend
        self.return_as = return_as
        self.verbose = config.get("verbose", 0) if verbose is None else verbose
        self.timeout = timeout
        self.batch_size = batch_size
        self.pre_dispatch = pre_dispatch

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None

    def __repr__(self):
        return f"{type(self).__name__}(n_jobs={self.n_jobs})"

    def __call__(self, iterable):
        results = self._run(iterable)
        if self.return_as == "list":
            return list(results)
        return results

    def _run(self, iterable):
        n_tasks = len(iterable) if hasattr(iterable, "__len__") else None
        width = floor(log10(n_tasks)) + 1 if n_tasks else 3
        start = time.time()
        done = 0
        for done, task in enumerate(iterable, start=1):
            function, args, kwargs = _unpack(task, done - 1)
            yield function(*args, **kwargs)
            self._progress(done, n_tasks, width, start)
        if done:
            self._print(f"Done {done:{width}d} out of {done:{width}d} | "
                        f"elapsed: {_format_time(time.time() - start)} finished")

    def _progress(self, done, n_tasks, width, start):
        if not self.verbose or _skip_progress(done - 1, self.verbose) or done == n_tasks:
            return
        elapsed = time.time() - start
        if n_tasks is None:
            pad = " " * (len("out of ") + width - len("tasks"))
            self._print(f"Done {done:{width}d} tasks {pad}| elapsed: {_format_time(elapsed)}")
        else:
            remaining = elapsed / done * (n_tasks - done)
            self._print(f"Done {done:{width}d} out of {n_tasks:{width}d} | elapsed: "
                        f"{_format_time(elapsed)} remaining: {_format_time(remaining)}")

    def _print(self, message):
        if self.verbose:
            stream = sys.stdout if self.verbose >= 50 else sys.stderr
            stream.write(f"[{self}]: {message}\n")


def _skip_progress(index, verbose):
    """joblib's filter: report the first call, then ever more sparsely (every call above 10)."""
    if verbose > 10 or index == 0:
        return False
    scale = 0.5 * (11 - verbose) ** 2
    return int(sqrt(index / scale)) == int(sqrt((index + 1) / scale))


def _format_time(seconds):
    return f"{seconds / 60:4.1f}min" if seconds > 60 else f" {seconds:5.1f}s"


def _unpack(task, position):
    try:
        function, args, kwargs = task
    except (TypeError, ValueError):
        raise TypeError(
            f"Parallel expects delayed calls such as delayed(f)(x), i.e. "
            f"(function, args, kwargs) tuples; item {position} is {task!r}"
        ) from None
    if not callable(function):
        raise TypeError(f"item {position} of Parallel's input calls {function!r}, "
                        "which is not callable")
    return function, args, kwargs


def _warn_missing_joblib():
    warn_once(f"joblib is not importable: Parallel runs calls sequentially; {_INSTALL_HINT}",
              JoblibMissingWarning)


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"Invalid {name}={value!r}: expected one of "
                         f"{', '.join(map(repr, allowed))}")


def _check_backend(backend):
    if isinstance(backend, str) and backend not in _BACKENDS:
        raise ValueError(f"Invalid backend={backend!r}: expected one of "
                         f"{', '.join(map(repr, _BACKENDS))} (all run sequentially "
                         f"without joblib; {_INSTALL_HINT})")


def _check_batch_size(batch_size):
    if batch_size == "auto":
        return
    if not is_whole(batch_size) or batch_size < 1:
        raise ValueError(f"Invalid batch_size={batch_size!r}: expected 'auto' or a "
                         "positive integer")


def _check_pre_dispatch(pre_dispatch):
    if is_whole(pre_dispatch):
        if pre_dispatch >= 1:
            return
    elif isinstance(pre_dispatch, str) and _PRE_DISPATCH.match(pre_dispatch):
        return
    raise ValueError(f"Invalid pre_dispatch={pre_dispatch!r}: expected 'all', a positive "
                     "integer or an expression such as '2 * n_jobs'")
