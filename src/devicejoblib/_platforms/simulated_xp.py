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
        elif callable(value) and not isinstance(value, type):
            value = _on_device(value, f"{self.__name__}.{name}")
        setattr(self, name, value)  # (looked up once)
        return value

    def __repr__(self):
        return f"<module {self.__name__!r} (simulated GPU arrays)>"


def _on_device(function, name):
    """``function`` taking and giving the bound device's arrays."""

    @functools.wraps(function)
    def on_device(*args, **kwargs):
        started = time.perf_counter()
        device_id = _common_device((*args, *kwargs.values()), name)
        raw_args, raw_kwargs = _unwrap(args), _unwrap(kwargs)
        result = function(*raw_args, **raw_kwargs)
        _charge(device_id, started, (*raw_args, *raw_kwargs.values()), result)
        return _wrap(result, device_id)

    return on_device


class SimulatedCuPy(_Namespace):
    """CuPy's namespace on simulated GPUs (what ``array_module()`` gives there)."""

    ndarray = SimulatedDeviceArray

    def __init__(self):
        super().__init__(np, "devicejoblib.simulated_cupy")
        self.cuda = types.SimpleNamespace(Device=SimulatedCudaDevice)

    def asarray(self, a, dtype=None, order=None, **kwargs):
        """``a`` (host data or this device's array) as an array on the bound device."""
        if type(a) is SimulatedDeviceArray:
            _common_device((a,), "asarray")
            if dtype is None or np.dtype(dtype) == a.dtype:
                return a
            return a.astype(dtype)
        return self._from_host(np.asarray(_unwrap(a), dtype=dtype, order=order))

    def array(self, obj, dtype=None, copy=True, order="K", ndmin=0, **kwargs):
        """A copy of ``obj`` (host data or a device array) on the bound device."""
        if type(obj) is SimulatedDeviceArray:
            _common_device((obj,), "array")
            data = np.array(raw(obj), dtype=dtype, copy=True, order=order, ndmin=ndmin)
            return SimulatedDeviceArray(data, obj.device_id)
        return self._from_host(np.array(_unwrap(obj), dtype=dtype, order=order,
                                        ndmin=ndmin))

    ascontiguousarray = asarray
    asanyarray = asarray

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
        clocks.charge_transfer(clocks.device_for(device_id), data.nbytes, to_device=True)
        return SimulatedDeviceArray(data.copy(), device_id)  # (a copy, as a real GPU's)


SIMULATED_CUPY = SimulatedCuPy()
