"""The simulator's device arrays: NumPy data that behaves as a CuPy array where CuPy
differs from NumPy, so that code that would fail on a real GPU fails on a simulated one
(imports NumPy: loaded on first use, never at package import).

What CuPy refuses, these refuse: implicit conversion to NumPy (``np.asarray(x)``,
``x.__array__()``, handing ``x`` to a NumPy-only library), arithmetic with NumPy arrays,
arrays of two devices in one operation. What CuPy allows, these allow: operators, NumPy
functions and methods (through NumPy's dispatch protocols, results on the device),
``.get()``, ``.device``, ``float(x)`` and ``x.item()`` (synchronising). Each operation is
charged to its device's clock (:mod:`.simulated_clock`) when the device has a profile.
"""

from __future__ import annotations

import time

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from ..arrays import array_types_changed
from . import simulated_clock as clocks

kept_any = False  # whether a simulated GPU kept an array: routing then looks for them

STRICT_ENV = "DEVICEJOBLIB_SIMULATED_STRICT"
_FIX = (" (a simulated GPU refuses it as CuPy does on a real GPU: in a GPU implementation "
        "use xp = devicejoblib.array_module() for array functions and x.get() or "
        "xp.asnumpy(x) for a host copy; simulate_gpus(strict=False) or "
        f"{STRICT_ENV}=0 hands GPU implementations NumPy arrays instead)")


class SimulatedCudaDevice:
    """What ``x.device`` gives for a simulated GPU's array, as ``cupy.cuda.Device``:
    its ``id`` (the GPU's index)."""

    __slots__ = ("id",)

    def __init__(self, device=None):
        if device is None:
            bound = clocks.bound_device()
            device = 0 if bound is None else bound.index
        self.id = int(device)

    def synchronize(self):
        """Wait for the work queued on this device."""
        clocks.synchronize(clocks.device_for(f"cuda:{self.id}"))

    def __eq__(self, other):
        return isinstance(other, SimulatedCudaDevice) and other.id == self.id

    def __hash__(self):
        return hash(("simulated cuda", self.id))

    def __repr__(self):
        return f"<CUDA Device {self.id} (simulated)>"


class SimulatedDeviceArray(NDArrayOperatorsMixin):
    """An array on a simulated GPU: it stands for a CuPy array on a real one.

    Passing it to a later call sends that call to the same simulated GPU (data
    affinity). ``device_id`` names the device (``"cuda:0"``), ``.device`` is a
    ``cupy.cuda.Device``-like object, ``.get()`` copies it to a NumPy array.
    """

    __slots__ = ("__weakref__", "_data", "device_id")
    __array_priority__ = 1000
    __hash__ = None

    def __init__(self, data, device_id):
        self._data = data
        self.device_id = device_id
        if not kept_any:  # one exists now: routing looks at arguments from here on
            _first_made()

    @classmethod
    def kept(cls, array, device_id):
        """``array`` (NumPy, or one of these) kept on the simulated GPU ``device_id``."""
        return array if isinstance(array, cls) else cls(array, device_id)

    def copy(self, order="C"):
        """A copy on the device this thread is bound to (CuPy copies across devices)."""
        bound = clocks.bound_device()
        device_id = self.device_id if bound is None else bound.id
        started = time.perf_counter()
        data = self._data.copy(order=order)
        _charge(device_id, started, (self._data,), data)
        return SimulatedDeviceArray(data, device_id)

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    # --- what CuPy gives -------------------------------------------------------------

    @property
    def device(self):
        return SimulatedCudaDevice(int(self.device_id.rpartition(":")[2]))

    def get(self, stream=None, out=None, order="C", blocking=True):
        """A NumPy copy of the array (waits for the device's queued work)."""
        started = time.perf_counter()
        host = self._data.copy(order=order) if out is None else out
        if out is not None:
            out[...] = self._data
        clocks.charge_transfer(clocks.device_for(self.device_id), self._data.nbytes, False,
                               started)
        return host

    def set(self, array, stream=None):
        """Copy the host array ``array`` into this one."""
        clocks.charge_transfer(clocks.device_for(self.device_id), array.nbytes,
                               to_device=True)
        self._data[...] = array

    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    nbytes = property(lambda self: self._data.nbytes)
    itemsize = property(lambda self: self._data.itemsize)
    strides = property(lambda self: self._data.strides)

    def __len__(self):
        return len(self._data)

    # --- refused, as CuPy refuses it --------------------------------------------------

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly" + _FIX)

    # --- operations: on the device, charged to its clock ------------------------------

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        started = time.perf_counter()  # (this wrapper's own time is host time too)
        out = kwargs.get("out")
        device_id = _common_device((*inputs, *(out or ())), f"numpy.{ufunc.__name__}")
        if out is not None:
            kwargs["out"] = tuple(_raw(o) for o in out)
        raw = [_raw(value) for value in inputs]
        result = getattr(ufunc, method)(*raw, **kwargs)
        flops = 0
        if ufunc is np.matmul and method == "__call__" and np.ndim(raw[0]):
            flops = 2 * np.size(result) * np.shape(raw[0])[-1]
        _charge(device_id, started, raw, result, flops)
        return out[0] if out is not None and len(out) == 1 else _wrap(result, device_id)

    def __array_function__(self, func, types, args, kwargs):
        started = time.perf_counter()
        device_id = _common_device((*args, *kwargs.values()), f"numpy.{func.__name__}")
        raw_args, raw_kwargs = _unwrap(args), _unwrap(kwargs)
        result = func(*raw_args, **raw_kwargs)
        _charge(device_id, started, (*raw_args, *raw_kwargs.values()), result)
        return _wrap(result, device_id)

    def __getitem__(self, key):
        started = time.perf_counter()
        result = self._data[_unwrap(key)]
        _charge(self.device_id, started, (), result)
        return _wrap(result, self.device_id)

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):  # CuPy copies a host array in
            clocks.charge_transfer(clocks.device_for(self.device_id), value.nbytes, True)
        else:
            _common_device((self, value), "assignment")
        started = time.perf_counter()
        self._data[_unwrap(key)] = _raw(value)
        _charge(self.device_id, started, (_raw(value),), None)

    def __iter__(self):
        for row in range(len(self._data)):
            yield self[row]

    def __getattr__(self, name):
        # ndarray's other methods and attributes (sum, reshape, astype, T...), on the
        # device; a private name is not looked up (pickling, copying ask for some)
        if name.startswith("__") or name == "_data":
            raise AttributeError(name)
        value = getattr(self._data, name)
        if not callable(value):
            return _wrap(value, self.device_id)

        def method(*args, **kwargs):
            started = time.perf_counter()
            device_id = _common_device((self, *args, *kwargs.values()), f"ndarray.{name}")
            result = value(*_unwrap(args), **_unwrap(kwargs))
            _charge(device_id, started, (self._data,), result)
            return _wrap(result, device_id)

        method.__name__ = name
        return method

    # --- to the host, synchronising (CuPy allows these) -------------------------------

    def _host(self):
        clocks.charge_transfer(clocks.device_for(self.device_id), self._data.nbytes, False)
        return self._data

    def item(self, *args):
        return self._host().item(*args)

    def tolist(self):
        return self._host().tolist()

    def __bool__(self):
        return bool(self._host())

    def __float__(self):
        return float(self._host())

    def __int__(self):
        return int(self._host())

    def __index__(self):
        return self._host().__index__()

    def __complex__(self):
        return complex(self._host())

    def __format__(self, spec):
        return format(self._host().item() if self.ndim == 0 else self._host(), spec)

    def __repr__(self):
        return repr(self._data).replace("array(", f"array<{self.device_id}>(", 1)

    def __str__(self):
        return str(self._data)

    def __reduce__(self):
        return SimulatedDeviceArray, (self._data, self.device_id)


def _first_made():
    global kept_any
    kept_any = True
    array_types_changed()


def to_device(value, device):
    """``value`` as a strict array on simulated ``device``: a NumPy array copied there
    (charged as a host-to-device copy); anything else as it is."""
    if isinstance(value, np.ndarray):
        started = time.perf_counter()
        data = value.copy()
        clocks.charge_transfer(clocks.clock_of(device), value.nbytes, True, started)
        return SimulatedDeviceArray(data, device.id)
    return value


def raw(value):
    """The NumPy data of a simulated device array (a host array as it is)."""
    return _raw(value)


def _raw(value):
    return value._data if type(value) is SimulatedDeviceArray else value


def _unwrap(value):
    """``value`` with the simulated device arrays in it (also in tuples, lists and
    dicts) replaced by their data."""
    if type(value) is SimulatedDeviceArray:
        return value._data
    if isinstance(value, (tuple, list)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _arrays_in(values):
    for value in values:
        if isinstance(value, (tuple, list)):
            yield from _arrays_in(value)
        elif isinstance(value, (SimulatedDeviceArray, np.ndarray)):
            yield value


def _common_device(values, what):
    """The device id of the simulated arrays among ``values``; a host (NumPy) array
    among them, or arrays of two devices, or arrays of another device than the one
    this thread is bound to, raise as CuPy does."""
    found = None
    for value in _arrays_in(values):
        if type(value) is not SimulatedDeviceArray:
            raise TypeError(f"Unsupported type {type(value)}: {what} got a NumPy (host) "
                            "array, which CuPy refuses on a real GPU too (move it to the "
                            "device first with xp.asarray(host_array))" + _FIX)
        if found is None:
            found = value.device_id
        elif value.device_id != found:
            raise ValueError(f"{what} got arrays of {found} and {value.device_id}: a "
                             "simulated GPU refuses arrays of two devices in one operation "
                             "(CuPy does without peer access between the GPUs): copy one "
                             "to the other's device with xp.array(x) or x.copy() there")
    bound = clocks.bound_device()
    if found is None:
        return "cuda:0" if bound is None else bound.id
    if bound is not None and bound.id != found:
        raise ValueError(f"Array device must be same as the current device: {what} runs "
                         f"on {bound.id} with an array of {found} (as on a real GPU without "
                         "peer access: copy it here with xp.array(x) or x.copy(), or let "
                         f"data affinity send the call to {found})")
    return found


def _wrap(value, device_id):
    """NumPy results as the device's arrays (a NumPy scalar as a 0-d array, as CuPy
    returns reductions)."""
    if isinstance(value, np.ndarray):
        return SimulatedDeviceArray(value, device_id)
    if isinstance(value, np.generic):
        return SimulatedDeviceArray(np.asarray(value), device_id)
    if isinstance(value, tuple):
        return tuple(_wrap(v, device_id) for v in value)
    if isinstance(value, list):
        return [_wrap(v, device_id) for v in value]
    return value


def _charge(device_id, started, inputs, result, flops=0):
    clock = clocks.device_for(device_id)
    if clock is None or clock.profile is None:
        return
    outputs = result if isinstance(result, tuple) else (result,)
    nbytes = sum(v.nbytes for v in (*inputs, *outputs) if isinstance(v, np.ndarray))
    clocks.charge_operation(clock, started, nbytes, flops)
