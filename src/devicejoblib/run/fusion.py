"""Running a list of calls on one device, fusing the calls of kernels that have a batched
form into one launch per group of compatible calls, results split back in call order."""

from __future__ import annotations

import inspect
import sys
from concurrent.futures import CancelledError
from dataclasses import dataclass, field

import numpy as np

from .._context import bind_thread
from .._kernels import Kernel
from .._utils import warn_once, warn_user

_SCALARS = (bool, int, float, complex, np.number)


class Failure:
    """A call's exception, kept in its result slot."""

    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error


class Lost(Failure):
    """A task cut short because its device was lost: ``done`` holds the results of its
    calls that completed before (they must not run again)."""

    __slots__ = ("done",)

    def __init__(self, error, done):
        super().__init__(error)
        self.done = done


@dataclass
class Ran:
    """What running a list of calls gave: one result (or :class:`Failure`) per call, the
    most bytes a fused call moved (stacked arguments and results), and the ``(calls,
    seconds)`` of each fused launch, results on the host included."""

    results: list
    bytes_per_call: int = 0
    launches: list = field(default_factory=list)

    def record_launch(self, n_calls, seconds, moved_bytes):
        self.bytes_per_call = max(self.bytes_per_call, moved_bytes // n_calls)
        self.launches.append((n_calls, seconds))


def run_calls(calls, device, keep_on_device=False, max_fused=None, on_out_of_memory=None,
              should_stop=None, cpu_fallback=None):
    """Run ``calls`` (``(function, args, kwargs)``) on ``device``, in order: a :class:`Ran`.

    At most ``max_fused`` calls go into one fused launch. A call that raised has a
    :class:`Failure` in its slot. Out of memory, a fused launch is split in halves (and
    ``on_out_of_memory(calls)`` told its size); a single call is retried once after the
    memory pool's cached blocks are freed. Calls run one by one stop at the first that
    fails (the ``Parallel`` call raises its error: the rest carry it too, not started),
    and when ``should_stop()`` turns true (an abort: the rest are cancelled). A call
    that does not fit alone runs on the CPU where ``cpu_fallback(function)`` allows.
    """
    runs = device.platform.runs
    if not has_batched_form(calls, runs):
        return Ran(run_one_by_one(calls, device, keep_on_device, should_stop, cpu_fallback))
    ran = Ran([None] * len(calls))
    results = ran.results
    pending = plan(calls, runs, max_fused)
    while pending:
        form, positions, arguments = pending.pop(0)
        if form is not None:
            function = calls[positions[0]][0]
            rows = _run_fused(function, form, arguments, device, keep_on_device, ran)
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
            results[position] = run_one(calls[position], device, keep_on_device,
                                        cpu_fallback=cpu_fallback)
    return ran


def run_one_by_one(calls, device, keep_on_device, should_stop, cpu_fallback=None):
    """Run ``calls`` unfused, in order, stopping at the first that fails or once
    ``should_stop()``: one result (or :class:`Failure`) per call."""
    results = []
    for call in calls:
        if should_stop is not None and should_stop():
            stopped = Failure(CancelledError(f"cancelled on {device}: the call was aborted"))
            return results + [stopped] * (len(calls) - len(results))
        result = run_one(call, device, keep_on_device, cpu_fallback=cpu_fallback)
        results.append(result)
        if type(result) is Failure:
            return results + [result] * (len(calls) - len(results))
    return results


def has_batched_form(calls, runs):
    """Whether a kernel among ``calls`` has a batched form for its ``runs``
    implementation (``"cpu"`` or ``"cuda"``)."""
    for function, _, _ in calls:
        if type(function) is Kernel and function.batched_form(runs) is not None:
            return True
    return False


def plan(calls, runs, max_fused=None):
    """Groups of fusable calls and single calls: ``(form or None, positions, arguments)``.

    Fusable calls share a kernel's batched form for ``kind``, array arguments of equal
    shape, dtype and type, scalar arguments of equal type, and equal ``same`` values.
    A group holds at most ``max_fused`` calls.
    """
    groups, order = {}, []
    for position, (function, args, kwargs) in enumerate(calls):
        form = function.batched_form(runs) if type(function) is Kernel else None
        key, arguments = _fusion_key(form, args, kwargs) if form is not None else (None, None)
        if key is None:
            order.append((None, [position], None))
            continue
        if form.stateful:  # (kernels given other setup arguments have other state)
            key = (key, function.resident_key)
        if key not in groups or len(groups[key][1]) == max_fused:
            groups[key] = (form, [], [])
            order.append(groups[key])
        groups[key][1].append(position)
        groups[key][2].append(arguments)
    # a group of one runs unfused: the reference behaviour, and no stacking to pay for
    return [(form if len(positions) > 1 else None, positions, arguments)
            for form, positions, arguments in order]


def run_one(call, device, keep_on_device, retry=True, cpu_fallback=None):
    """One call, unfused; its result (moved to the host) or its :class:`Failure`.

    Out of memory, it is retried once after the pool's cached blocks are freed; if it
    still does not fit and ``cpu_fallback(function)`` allows, it runs on the CPU.
    """
    function, args, kwargs = call
    platform = device.platform
    try:
        platform.simulate_launch(device, (*args, *kwargs.values()))
        # (a kernel straight to its implementation for the device this thread is bound to)
        result = (function.run_on(device, args, kwargs) if type(function) is Kernel
                  else function(*args, **kwargs))
        return to_host(result, device, keep_on_device)
    except Exception as exc:
        oom = platform.is_out_of_memory(exc)
        to_cpu = oom and not retry and cpu_fallback is not None and cpu_fallback(function)
        if not (oom and retry) and not to_cpu:
            add_note(exc, f"raised by {describe(function, args, kwargs)} on {device}")
            return Failure(exc)
        error = exc
    _forget(error, device)
    if to_cpu:
        return _run_on_cpu(call, device)
    return run_one(call, device, keep_on_device, retry=False, cpu_fallback=cpu_fallback)


def _run_on_cpu(call, device):
    """A kernel call too big for ``device``, run by its CPU implementation instead."""
    function, args, kwargs = call
    size = sum(getattr(v, "nbytes", 0) for v in (*args, *kwargs.values()))
    warn_once(f"{function.__qualname__} does not fit on {device} even alone ({size} bytes "
              "of arguments): such calls run on the CPU", RuntimeWarning,
              key=(function.__qualname__, device.id))
    try:
        return function.run_on(None, args, kwargs)
    except Exception as exc:
        add_note(exc, f"raised by {describe(function, args, kwargs)} on the CPU, after "
                      f"it did not fit on {device}")
        return Failure(exc)


_OUT_OF_MEMORY = object()


def _forget(error, device):
    """After an out-of-memory error, outside its except block: drop the traceback (its
    frames hold the failed launch's arrays) and free the pool's cached blocks."""
    error.__traceback__ = None
    device.platform.free_cached_memory()


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


def _run_fused(kernel, form, arguments, device, keep_on_device, ran):
    """Rows of one fused launch; None when the batched form failed (run them unfused)."""
    platform = device.platform
    library = platform.library_for(device, kernel.library_on(device))
    first = arguments[0]
    stacked = {}
    for name, value in first.items():
        values = [a[name] for a in arguments]
        if name in form.same:
            stacked[name] = value
        elif hasattr(value, "shape"):
            stacked[name] = library.stack(values)
        else:
            stacked[name] = library.module().asarray(values)
    bound = inspect.BoundArguments(form.signature, stacked)
    args = (kernel.state(device), *bound.args) if form.stateful else bound.args
    try:
        elapsed = platform.start_timer(device)
        platform.simulate_launch(device, stacked.values())
        out = form.function(*args, **bound.kwargs)
        if keep_on_device:  # each row kept (marked with its device where a library must)
            rows = [to_host(row, device, True) for row in _split(out, len(arguments))]
        else:  # one copy to the host for the launch
            rows = _split(to_host(out, device, keep_on_device), len(arguments))
        if keep_on_device:
            library.synchronize()  # time the launch, not its queueing
        moved = sum(getattr(v, "nbytes", 0) for v in (*stacked.values(), *_parts(out)))
        ran.record_launch(len(arguments), elapsed(), moved)
        return rows
    except Exception as exc:
        if platform.is_device_lost(exc):
            return None  # run unfused: the first call fails with it, in its own slot
        if not platform.is_out_of_memory(exc):
            warn_user(f"the batched form of {form.function.__qualname__} raised "
                      f"{type(exc).__name__}: {exc}; its {len(arguments)} calls ran "
                      "unfused", RuntimeWarning)
            return None
        error = exc
    _forget(error, device)
    return _OUT_OF_MEMORY


def _parts(out):
    return out if isinstance(out, tuple) else (out,)


def _split(out, n):
    if isinstance(out, tuple):
        columns = [_split(part, n) for part in out]
        return [tuple(column[i] for column in columns) for i in range(n)]
    if len(out) != n:
        raise ValueError(f"a batched form returned {len(out)} rows for {n} calls")
    return list(out)


def add_note(exc, note):
    """Attach ``note`` to ``exc`` (``__notes__``, printed with the traceback on 3.11+)."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def to_host(result, device, keep_on_device=False):
    """A call's result as the caller receives it: its arrays (also inside tuples and
    lists) moved to the host by the device's platform, unless kept on the device."""
    if isinstance(result, tuple):
        return tuple(to_host(r, device, keep_on_device) for r in result)
    if isinstance(result, list):
        return [to_host(r, device, keep_on_device) for r in result]
    return device.platform.to_host(result, device, keep_on_device)


def describe(function, args, kwargs):
    """``name(arg, ..., key=value)`` with long values shortened."""
    name = getattr(function, "__qualname__", repr(function))
    shown = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(shown)})"


def _short(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def run_bound(device, kernel, args, kwargs, keep_on_device=False):
    """One kernel call run in the calling thread, bound to ``device`` for the call
    (``Parallel(n_jobs=1)``: a debugger can step into GPU code); its result on the host
    unless kept."""
    if not device.is_gpu:
        return kernel.run_on(None, args, kwargs)
    with device.platform.bound(device) as sync:
        previous = bind_thread(device)
        try:
            device.platform.simulate_launch(device, (*args, *kwargs.values()))
            result = kernel.run_on(device, args, kwargs)
            sync()
            return to_host(result, device, keep_on_device)
        except Exception as exc:
            add_note(exc, f"raised by {describe(kernel, args, kwargs)} on {device}")
            raise
        finally:
            bind_thread(previous)
