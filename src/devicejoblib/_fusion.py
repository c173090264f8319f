"""Running a list of calls on one device, fusing the calls of kernels that have a batched
form into one launch per group of compatible calls, results split back in call order."""

from __future__ import annotations

import inspect
import sys
import time

import numpy as np

from ._arrays import to_host
from ._context import array_module
from ._kernels import Kernel
from ._utils import warn_user

_SCALARS = (bool, int, float, complex, np.number)


class Failure:
    """A call's exception, kept in its result slot."""

    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error


def run_calls(calls, device, keep_on_device=False, max_fused=None, stats=None,
              on_out_of_memory=None):
    """Results of ``calls`` (``(function, args, kwargs)``) on ``device``, in order.

    At most ``max_fused`` calls go into one fused launch. A call that raised has a
    :class:`Failure` in its slot. Out of memory, a fused launch is split in halves (and
    ``on_out_of_memory(calls)`` told its size); a single call is retried once after the
    memory pool's cached blocks are freed. ``stats``, when given, receives
    ``"bytes_per_call"`` (the most bytes a fused call moved: stacked arguments and
    results) and ``"launches"``: ``(calls, seconds)`` of each fused launch, results on
    the host included.
    """
    kind = "cuda" if device.is_gpu else "cpu"
    if not has_batched_form(calls, kind):
        return [run_one(call, device, keep_on_device) for call in calls]
    results = [None] * len(calls)
    pending = plan(calls, kind, max_fused)
    while pending:
        form, positions, arguments = pending.pop(0)
        if form is not None:
            function = calls[positions[0]][0]
            rows = _run_fused(function, form, arguments, device, keep_on_device, stats)
            if rows is _OUT_OF_MEMORY:
                if on_out_of_memory is not None:
                    on_out_of_memory(len(positions))
                half = len(positions) // 2
                pending[:0] = [(form if len(part) > 1 else None, part, args)
                               for part, args in ((positions[:half], arguments[:half]),
                                                  (positions[half:], arguments[half:]))]
                continue
            if rows is not None:
                for position, row in zip(positions, rows):
                    results[position] = row
                continue
        for position in positions:
            results[position] = run_one(calls[position], device, keep_on_device)
    return results


def has_batched_form(calls, kind):
    """Whether a kernel among ``calls`` has a batched form for ``kind``."""
    for function, _, _ in calls:
        if type(function) is Kernel and function.batched_form(kind) is not None:
            return True
    return False


def plan(calls, kind, max_fused=None):
    """Groups of fusable calls and single calls: ``(form or None, positions, arguments)``.

    Fusable calls share a kernel's batched form for ``kind``, array arguments of equal
    shape, dtype and type, scalar arguments of equal type, and equal ``same`` values.
    A group holds at most ``max_fused`` calls.
    """
    groups, order = {}, []
    for position, (function, args, kwargs) in enumerate(calls):
        form = function.batched_form(kind) if type(function) is Kernel else None
        key, arguments = _fusion_key(form, args, kwargs) if form is not None else (None, None)
        if key is None:
            order.append((None, [position], None))
            continue
        if key not in groups or len(groups[key][1]) == max_fused:
            groups[key] = (form, [], [])
            order.append(groups[key])
        groups[key][1].append(position)
        groups[key][2].append(arguments)
    # a group of one runs unfused: the reference behaviour, and no stacking to pay for
    return [(form if len(positions) > 1 else None, positions, arguments)
            for form, positions, arguments in order]


def run_one(call, device, keep_on_device, retry=True):
    """One call, unfused; its result (moved to the host) or its :class:`Failure`."""
    function, args, kwargs = call
    try:
        if device.launch_latency:
            _simulate_launch(device)
        return to_host(function(*args, **kwargs), device, keep_on_device)
    except Exception as exc:
        if not (retry and is_out_of_memory(exc)):
            add_note(exc, f"raised by {describe(function, args, kwargs)} on {device}")
            return Failure(exc)
        error = exc
    _forget(error)
    return run_one(call, device, keep_on_device, retry=False)


_OOM_CODES = ("CUDA_ERROR_OUT_OF_MEMORY", "cudaErrorMemoryAllocation")
_OUT_OF_MEMORY = object()


def _forget(error):
    """After an out-of-memory error, outside its except block: drop the traceback (its
    frames hold the failed launch's arrays) and free the pool's cached blocks."""
    error.__traceback__ = None
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        cupy.get_default_memory_pool().free_all_blocks()


def is_out_of_memory(exc):
    """Out of device memory: retry with fewer calls.

    CuPy's ``OutOfMemoryError`` (a ``MemoryError``), a plain ``MemoryError``, and the
    CUDA errors that Numba (``CudaAPIError``) and CuPy's runtime calls raise for it.
    """
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or any(code in str(exc) for code in _OOM_CODES))


def _fusion_key(form, args, kwargs):
    if not kwargs and len(args) == len(form.names):
        arguments = dict(zip(form.names, args))  # the common case, without bind()
    else:
        try:
            bound = form.signature.bind(*args, **kwargs)
        except TypeError:
            return None, None  # the unfused call raises the right error
        bound.apply_defaults()
        arguments = bound.arguments
    key = [id(form)]
    for name, value in arguments.items():
        if name in form.same:
            try:
                hash(value)
            except TypeError:
                return None, None
            key.append((name, type(value), value))
        elif isinstance(value, _SCALARS):  # NumPy scalars too, before their .shape
            key.append((name, type(value)))
        elif hasattr(value, "shape") and hasattr(value, "dtype"):
            key.append((name, type(value), value.shape, value.dtype))
        else:
            return None, None
    return tuple(key), arguments


def _run_fused(kernel, form, arguments, device, keep_on_device, stats):
    """Rows of one fused launch; None when the batched form failed (run them unfused)."""
    xp = array_module()
    first = arguments[0]
    stacked = {}
    for name, value in first.items():
        values = [a[name] for a in arguments]
        if name in form.same:
            stacked[name] = value
        elif hasattr(value, "shape"):
            stacked[name] = _stack(values, xp)
        else:
            stacked[name] = xp.asarray(values)
    bound = inspect.BoundArguments(form.signature, stacked)
    args = (kernel.state(device), *bound.args) if form.stateful else bound.args
    try:
        clock = launch_clock(device)
        start = clock()
        _simulate_launch(device)
        out = form.function(*args, **bound.kwargs)
        rows = _split(to_host(out, device, keep_on_device), len(arguments))
        if keep_on_device and not device.simulated:
            xp.cuda.get_current_stream().synchronize()  # time the launch, not its queueing
        if stats is not None:
            moved = sum(getattr(v, "nbytes", 0) for v in (*stacked.values(), *_parts(out)))
            stats["bytes_per_call"] = max(stats.get("bytes_per_call", 0),
                                          moved // len(arguments))
            stats.setdefault("launches", []).append(
                (len(arguments), clock() - start + device.launch_latency))
        return rows
    except Exception as exc:
        if not is_out_of_memory(exc):
            warn_user(f"the batched form of {form.function.__qualname__} raised "
                      f"{type(exc).__name__}: {exc}; its {len(arguments)} calls ran "
                      "unfused", RuntimeWarning)
            return None
        error = exc
    _forget(error)
    return _OUT_OF_MEMORY


def _stack(values, xp):
    if all(isinstance(v, np.ndarray) for v in values):
        return xp.asarray(np.stack(values))  # one host-to-device copy for the group
    return xp.stack([xp.asarray(v) for v in values])


def _parts(out):
    return out if isinstance(out, tuple) else (out,)


def _split(out, n):
    if isinstance(out, tuple):
        columns = [_split(part, n) for part in out]
        return [tuple(column[i] for column in columns) for i in range(n)]
    if len(out) != n:
        raise ValueError(f"a batched form returned {len(out)} rows for {n} calls")
    return list(out)


def launch_clock(device):
    """The clock that times a launch: wall time on a real GPU (after its results are on
    the host, i.e. synchronised); on a simulated one, the worker thread's CPU time, so
    that the other simulated GPUs' turns at the GIL do not count (its simulated latency
    is a sleep: add ``device.launch_latency``)."""
    return time.thread_time if device.simulated else time.perf_counter


def _simulate_launch(device):
    if device.launch_latency:
        time.sleep(device.launch_latency)  # like a real launch and sync: GIL released


def add_note(exc, note):
    """Attach ``note`` to ``exc`` (``__notes__``, printed with the traceback on 3.11+)."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def describe(function, args, kwargs):
    """``name(arg, ..., key=value)`` with long values shortened."""
    name = getattr(function, "__qualname__", repr(function))
    shown = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(shown)})"


def _short(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
