"""The one module that uses joblib's private objects: ``BatchedCalls``' fields,
``LokyBackend`` and its auto batching (``AutoBatchingMixin``), ``ThreadingBackend``'s
``n_jobs`` arithmetic, ``get_active_backend``, its thread-local configuration,
``Parallel``'s sequential loop (to recognise the calls it makes), the memmapping folder
context. The joblib
range they were checked with is pinned in pyproject.toml; CI tests its lowest and newest
releases.
"""

from __future__ import annotations

import copy
import functools

from joblib import parallel as _joblib_parallel
from joblib._parallel_backends import (
    FallbackToBackend,
    LokyBackend,
    ParallelBackendBase,
    ThreadingBackend,
)
from joblib.parallel import BatchedCalls, Parallel, get_active_backend

__all__ = [
    "FallbackToBackend",
    "ParallelBackendBase",
    "active_backend",
    "applied_config",
    "cpu_auto_batching",
    "cpu_n_jobs",
    "known_total",
    "make_loky",
    "nested_config_key",
    "sequential_backend",
    "sub_batch",
]


def active_backend():
    """The backend a ``parallel_config`` block (or joblib's default) has set."""
    return get_active_backend()[0]


_SEQUENTIAL_LOOP = Parallel._get_sequential_output.__code__


def sequential_backend(frame):
    """The backend of the ``Parallel`` call whose ``n_jobs=1`` loop is running in
    ``frame`` (the loop calls each task itself), else None."""
    if frame is None or frame.f_code is not _SEQUENTIAL_LOOP:
        return None
    return getattr(frame.f_locals.get("self"), "_backend", None)


def known_total(parallel):
    """The number of calls of a ``Parallel`` call once its input is exhausted, else
    None."""
    if parallel is None or getattr(parallel, "_original_iterator", True) is not None:
        return None
    return getattr(parallel, "n_dispatched_tasks", None)


def cpu_n_jobs(n_jobs):
    """Workers for ``n_jobs`` by joblib's own arithmetic (None: 1, -1: all CPUs, -2: all
    but one...; 0 is a ValueError)."""
    return ThreadingBackend().effective_n_jobs(n_jobs)


def cpu_auto_batching(nesting_level=None):
    """joblib's auto batching policy for loky (``compute_batch_size``,
    ``batch_completed``, ``reset_batch_stats``; ``.parallel`` set per call)."""
    return LokyBackend(nesting_level=nesting_level)


class applied_config:
    """``with applied_config(batch):`` the configuration a joblib batch's calls run
    under (what ``BatchedCalls.__call__`` sets for nested Parallel calls: its backend
    and ``n_jobs``), written straight into joblib's thread-local configuration.

    For a backend instance and ``n_jobs``, ``parallel_config`` only copies the current
    configuration with those two replaced; its validation, paid for every batch, was the
    largest cost of a one-call batch on a GPU worker (bench_dispatch.py).
    """

    __slots__ = ("_batch", "_old")

    def __init__(self, batch):
        self._batch = batch

    def __enter__(self):
        local, batch = _joblib_parallel._backend, self._batch
        self._old = getattr(local, "config", _joblib_parallel.default_parallel_config)
        local.config = {**self._old, "backend": batch._backend, "n_jobs": batch._n_jobs}
        return self

    def __exit__(self, *exc_info):
        _joblib_parallel._backend.config = self._old


def nested_config_key(batch):
    """What makes two batches' nested configs equal: joblib makes a new nested backend
    object for every batch, so compare its kind, not its identity."""
    backend = batch._backend
    return type(backend), getattr(backend, "nesting_level", None), batch._n_jobs


def sub_batch(batch, items):
    """A BatchedCalls with some of ``batch``'s calls and an equal nested config: a copy
    of its nested backend, as the parts may run at once on several devices and a nested
    backend object serves one Parallel call at a time."""
    return BatchedCalls(iter(items), (copy.copy(batch._backend), batch._n_jobs),
                        batch._reducer_callback, batch._pickle_cache)


def make_loky(parallel, n_jobs, nesting_level, inner_max_num_threads, **kwargs):
    """``(submit, shutdown, abort)`` of a configured LokyBackend whose batches pickle
    memmapped arrays into ``parallel``'s temporary folder (deleted when it ends: joblib
    does this only for its own LokyBackend, and without it the files outlive the call).

    Raises FallbackToBackend where loky cannot run (below a thread, in a daemon process).
    """
    loky = LokyBackend(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
    loky.configure(n_jobs=n_jobs, parallel=parallel, **kwargs)
    folders, call_id = loky._workers._temp_folder_manager, parallel._id

    def submit(batch):
        inner = batch
        while hasattr(inner, "batch"):  # wrappers' BatchedCalls
            inner = inner.batch
        inner._reducer_callback = functools.partial(folders.set_current_context, call_id)
        return loky.submit(batch)

    return submit, loky.terminate, lambda: loky.abort_everything(ensure_ready=False)
