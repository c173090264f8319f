"""The array module a GPU implementation gets on a simulated GPU with strict arrays
(``devicejoblib.array_module()``): NumPy's namespace, CuPy's rules. Functions return
the bound device's arrays and refuse NumPy (host) arrays, as CuPy's do; ``asarray``,
``array`` and ``asnumpy`` copy between host and device; submodules (``random``,
``linalg``, ``fft``) follow the same rules.
"""

from __future__ import annotations

import functools
import time
import types

import numpy as np

from . import simulated_clock as clocks
from .simulated_arrays import (
    SimulatedCudaDevice,
    SimulatedDeviceArray,
    _charge,
    _common_device,
    _unwrap,
    _wrap,
    raw,
)


class _Namespace:
    """NumPy's (sub)module ``module`` under CuPy's rules."""

    def __init__(self, module, name):
        self._module = module
        self.__name__ = name

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            value = getattr(self._module, name)
        except AttributeError:
            raise AttributeError(f"module {self.__name__!r} (a simulated GPU's CuPy "
                                 f"stand-in, NumPy's namespace) has no attribute "
                                 f"{name!r}") from None
        if isinstance(value, types.ModuleType):
            value = _Namespace(value, f"{self.__name__}.{name}")
        elif isinstance(value, np.ufunc):
            value = _DeviceUfunc(value, f"{self.__name__}.{name}")
        elif callable(value) and not isinstance(value, type):
            value = _on_device(value, f"{self.__name__}.{name}")
        setattr(self, name, value)  # (looked up once)
        return value

    def __repr__(self):
        return f"<module {self.__name__!r} (simulated GPU arrays)>"


def _on_device(function, name):
    """``function`` taking and giving the bound device's arrays (``out=`` arrays are
    filled and returned, as CuPy's)."""

    @functools.wraps(function)
    def on_device(*args, **kwargs):
        started = time.perf_counter()
        device_id = _common_device((*args, *kwargs.values()), name)
        out = kwargs.get("out")
        raw_args, raw_kwargs = _unwrap(args), _unwrap(kwargs)
        result = function(*raw_args, **raw_kwargs)
        _charge(device_id, started, (*raw_args, *raw_kwargs.values()), result)
        if type(out) is SimulatedDeviceArray:
            return out
        return _wrap(result, device_id)

    return on_device


class _DeviceUfunc:
    """A NumPy ufunc under CuPy's rules: called, and its methods (``reduce``,
    ``accumulate``, ``outer``, ``at``...), on the device's arrays."""

    def __init__(self, ufunc, name):
        self._ufunc, self.__name__ = ufunc, name
        self._call = _on_device(ufunc, name)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name):
        value = getattr(self._ufunc, name)
        return _on_device(value, f"{self.__name__}.{name}") if callable(value) else value

    def __repr__(self):
        return f"<ufunc {self.__name__!r} (simulated GPU arrays)>"


class _DeviceRandom(_Namespace):
    """``xp.random``: a random state per device (CuPy's are), functions taking CuPy's
    ``dtype=``."""

    _states = {}  # device id -> its numpy.random.RandomState

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        state = self._state()
        if not hasattr(state, name):
            return super().__getattr__(name)  # default_rng, Generator...
        method = _on_device(getattr(state, name), f"{self.__name__}.{name}")

        def drawn(*args, dtype=None, **kwargs):
            out = method(*args, **kwargs)
            return out if dtype is None else out.astype(dtype, copy=False)

        return drawn

    def _state(self):
        device = clocks.bound_device()
        key = "cuda:0" if device is None else device.id
        state = self._states.get(key)
        if state is None:
            state = self._states.setdefault(key, np.random.RandomState())
        return state


class _SimulatedCUDA:
    """``xp.cuda``: what a simulated GPU can stand for of ``cupy.cuda``."""

    class Device(SimulatedCudaDevice):
        """``cupy.cuda.Device``: as a context, the thread's current device (arrays made
        inside live there) until it exits, as CuPy's."""

        __slots__ = ("_previous",)

        def __enter__(self):
            target = clocks.device_for(f"cuda:{self.id}")
            if target is None:  # (a simulated GPU gets its clock when a thread binds it)
                raise ValueError(f"Invalid device cuda:{self.id}: not a simulated GPU of "
                                 "this backend's (xp.cuda.Device takes the index of one "
                                 "its calls run on)")
            self._previous = clocks.bind(target.device)
            return self

        def __exit__(self, *exc_info):
            clocks.bind(self._previous)

    class Stream:
        """Streams are not simulated: a device's work is one queue."""

        null = types.SimpleNamespace(synchronize=clocks.synchronize_device)

    runtime = types.SimpleNamespace(deviceSynchronize=clocks.synchronize_device)


class _MemoryPool:
    """``cupy.get_default_memory_pool()``: no pool is simulated (arrays are NumPy's)."""

    def free_all_blocks(self):
        return None

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0


class SimulatedCuPy(_Namespace):
    """CuPy's namespace on simulated GPUs (what ``array_module()`` gives there)."""

    ndarray = SimulatedDeviceArray

    def __init__(self):
        super().__init__(np, "devicejoblib.simulated_cupy")
        self.cuda = _SimulatedCUDA()
        self.random = _DeviceRandom(np.random, f"{self.__name__}.random")

    def asarray(self, a, dtype=None, order=None, **kwargs):
        """``a`` as an array on the bound device: a device array as it is (any device's,
        as CuPy's ``asarray``), unless ``dtype`` or ``order`` ask for a copy."""
        if type(a) is SimulatedDeviceArray:
            data = np.asarray(raw(a), dtype=dtype, order=order)
            return a if data is raw(a) else SimulatedDeviceArray(data, a.device_id)
        return self._from_host(np.asarray(_unwrap(a), dtype=dtype, order=order))

    def array(self, obj, dtype=None, copy=True, order="K", ndmin=0, **kwargs):
        """A copy of ``obj`` (host data, or a device array of any device) on the bound
        device."""
        if type(obj) is SimulatedDeviceArray:
            bound = clocks.bound_device()
            device_id = obj.device_id if bound is None else bound.id
            started = time.perf_counter()
            data = np.array(raw(obj), dtype=dtype, copy=True, order=order, ndmin=ndmin)
            _charge(device_id, started, (raw(obj),), data)
            return SimulatedDeviceArray(data, device_id)
        return self._from_host(np.array(_unwrap(obj), dtype=dtype, order=order,
                                        ndmin=ndmin))

    def ascontiguousarray(self, a, dtype=None, **kwargs):
        """``a`` as a C-contiguous array on the bound device."""
        return self.asarray(a, dtype=dtype, order="C")

    asanyarray = asarray

    @staticmethod
    def get_default_memory_pool():
        """CuPy's memory pool: none is simulated."""
        return _MemoryPool()

    get_default_pinned_memory_pool = get_default_memory_pool

    def asnumpy(self, a, stream=None, order="C", out=None, **kwargs):
        """``a`` as a NumPy array on the host (a copy of a device array)."""
        if type(a) is SimulatedDeviceArray:
            return a.get(out=out, order=order)
        return np.asarray(a, order=order)

    def get_array_module(self, *args):
        """This module when an argument is a simulated device array, else NumPy."""
        return self if any(type(a) is SimulatedDeviceArray for a in args) else np

    @staticmethod
    def fuse(*args, **kwargs):
        """CuPy's kernel fusion: a simulated GPU runs the function as it is."""
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda function: function

    def _from_host(self, data):
        device = clocks.bound_device()
        device_id = "cuda:0" if device is None else device.id
        started = time.perf_counter()
        copied = data.copy()  # (a copy, as a real GPU's)
        clocks.charge_transfer(clocks.device_for(device_id), data.nbytes, True, started)
        return SimulatedDeviceArray(copied, device_id)


SIMULATED_CUPY = SimulatedCuPy()
