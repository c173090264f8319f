"""``@kernel``: a function with per-device implementations (CPU, CUDA)."""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import threading

from ._context import bound_device, current_device
from ._errors import DeviceUnavailableError
from ._platforms import GPU_IMPLEMENTATION, IMPLEMENTATIONS
from ._setup_args import SetupArgs
from ._specs import ANYWHERE, Placement
from ._utils import check_callable, check_flag


def kernel(function=None, *, nogil=False, gpu_only=False, portable=False):
    """Make ``function`` a kernel: a callable with a CPU and a GPU implementation.

    Parameters
    ----------
    function : callable
        The CPU implementation (the GPU one when ``gpu_only=True``).
    nogil : bool
        The CPU implementation releases the GIL (Numba ``nogil``, NumPy-heavy code): its
        CPU calls go to threads rather than processes.
    gpu_only : bool
        There is no CPU implementation: ``function`` is the GPU one.
    portable : bool
        ``function`` is written against :func:`devicejoblib.array_module` and serves as
        both implementations.

    Examples
    --------
    >>> @kernel
    ... def norm(x):
    ...     return float((x * x).sum()) ** 0.5
    >>> @norm.cuda
    ... def _(x):
    ...     import cupy
    ...     return float(cupy.sqrt((x * x).sum()))
    """
    nogil, gpu_only, portable = (check_flag(name, value) for name, value in (
        ("nogil", nogil), ("gpu_only", gpu_only), ("portable", portable)))
    if gpu_only and portable:
        raise ValueError("Invalid kernel(gpu_only=True, portable=True): a portable function "
                         "is both implementations, a gpu_only one has no CPU implementation; "
                         "choose one")
    if function is None:
        return functools.partial(kernel, nogil=nogil, gpu_only=gpu_only, portable=portable)
    check_callable("kernel function", function,
                   "a function: use @kernel, or @kernel(nogil=..., gpu_only=..., portable=...)")
    cuda = function if gpu_only or portable else None
    return Kernel(None if gpu_only else function, cuda, nogil=nogil, wraps=function)


class Kernel:
    """A callable with per-device implementations; made by :func:`kernel`.

    Called directly it runs its CPU implementation. Under ``Parallel`` with the
    ``"device"`` backend each call runs where routing sends it; on a GPU worker the
    GPU implementation receives its NumPy array arguments as arrays of that device.
    """

    def __init__(self, cpu, cuda=None, *, nogil=False, placement=None, wraps=None,
                 batched=None, setup=None):
        self._cpu = cpu
        self._cuda = cuda
        self._cuda_library = None  # the array library the GPU implementation is for
        self.nogil = nogil
        self._pin = ANYWHERE if placement is None else None  # parsed on first use
        self.placement = placement
        self._batched = batched or {}  # "cpu" / "cuda" -> BatchedForm
        self._setup = setup
        self._setup_args = None  # a SetupArgs (setup_with), or None
        functools.update_wrapper(self, wraps or cpu or cuda)

    @property
    def has_cpu(self):
        return self._cpu is not None

    @property
    def has_gpu(self):
        """A GPU implementation, or a batched form for GPUs (single calls then run the
        CPU implementation on the GPU's worker)."""
        return self._cuda is not None or GPU_IMPLEMENTATION in self._batched

    def cuda(self, function=None, *, library=None):
        """Decorator: register ``function`` as the GPU implementation; returns the kernel.

        Parameters
        ----------
        library : str, optional
            The array library it is written for (``"cupy"``, ``"numba"``, a registered
            one's, registered by the time it runs; see
            :func:`devicejoblib.array_libraries`): its NumPy arguments arrive as that
            library's arrays on the GPU. Default: the library the GPU was found through
            (CuPy where installed).
        """
        if library is not None and not (isinstance(library, str) and library):
            raise TypeError(f"Invalid library={library!r} for the GPU implementation of "
                            f"{self.__name__!r}: expected the name of an array library")
        if function is None:
            return functools.partial(self.cuda, library=library)
        self._cuda = check_callable(f"GPU implementation of {self.__name__!r}", function)
        self._cuda_library = library
        return self

    def batched(self, function=None, *, same=(), device=None):
        """Decorator: register the batched form, which runs many calls in one launch.

        The batched form takes the same parameters, each stacked along a new leading
        axis (arrays with ``xp.stack``, scalars as 1-D arrays), and returns the stacked
        results (an array, or a tuple of arrays, with one row per call). Calls whose
        array arguments have equal shapes and dtypes — and equal values for the
        parameters named in ``same``, passed through unstacked — are fused.

        Parameters
        ----------
        same : sequence of str
            Parameters that must be equal across fused calls (a horizon, a mode...).
        device : {None, "cpu", "cuda"}
            Where the form is used: both (written against ``array_module()``), or one.
        """
        if function is None:
            return functools.partial(self.batched, same=same, device=device)
        check_callable(f"batched form of {self.__name__!r}", function)
        kinds = IMPLEMENTATIONS if device is None else (device,)
        if not set(kinds) <= set(IMPLEMENTATIONS):
            raise ValueError(f"Invalid device={device!r} for a batched form: expected "
                             "None (both), 'cpu' or 'cuda'")
        form = BatchedForm(function, tuple(same), inspect.signature(self.__wrapped__),
                           stateful=self._setup is not None)
        for kind in kinds:
            self._batched[kind] = form
        return self

    def setup(self, function):
        """Decorator: register a per-device setup, ``function(device) -> state``.

        It runs once per device a worker serves — on each GPU's worker thread (so that
        arrays it makes land on that GPU), once per CPU worker process — and every call
        on that device receives its result as the implementations' first argument
        (callers do not pass it). Model weights, compiled kernels and random generators
        are made once per device instead of being shipped with every call.
        """
        self._setup = check_callable(f"setup of {self.__name__!r}", function,
                                     "a function of the device")
        for form in self._batched.values():
            form.set_stateful(True)
        return self

    def setup_with(self, **setup_args):
        """This kernel, its setup given ``setup_args`` as keyword arguments.

        ``classify.setup_with(checkpoint="model.pt")``: the setup runs as
        ``setup(device, checkpoint="model.pt")``, once per device, and its state is kept
        per kernel and arguments (other arguments make other state). Arguments reach a
        worker process once, in a file it reads when it first makes the state — a model
        object given here is not sent with every call.

        Raises
        ------
        TypeError
            The kernel has no setup, or the setup does not take these arguments.
        """
        if self._setup is None:
            raise TypeError(f"kernel {self.__name__!r} has no setup to give {sorted(setup_args)} "
                            "to (register one with @kernel.setup)")
        try:
            inspect.signature(self._setup).bind(None, **setup_args)
        except TypeError as exc:
            raise TypeError(f"Invalid setup arguments {sorted(setup_args)} for the setup of "
                            f"{self.__name__!r}: {exc}") from None
        given = self._placed(self.placement)
        given._setup_args = SetupArgs(setup_args)
        return given

    def library_on(self, device):
        """The array library its implementation for ``device`` names (None: the
        device's default; the CPU implementation names none)."""
        return self._cuda_library if device.platform.runs == GPU_IMPLEMENTATION else None

    def state(self, device=None):
        """This kernel's resident state on ``device`` (default: where the caller runs)."""
        return resident_state(self, device or current_device())

    def batched_form(self, kind):
        """The :class:`BatchedForm` used on devices of ``kind``, or None."""
        return self._batched.get(kind)

    def on(self, device):
        """This kernel, pinned to some devices.

        Parameters
        ----------
        device : device spec
            ``"cpu"``, ``"cuda:1"``, ``"gpu"``, a GPU index or a list of these (see
            :func:`devicejoblib.parse_devices`).

        Returns
        -------
        Kernel
            A kernel with the same implementations whose calls may only run there. The
            pin wins over every other routing rule. A malformed spec is an
            :class:`~devicejoblib.InvalidDeviceError` here; a device the backend lacks,
            when the call is dispatched.
        """
        placed = self._placed(device)
        placed.pin  # noqa: B018  (parsed now: a malformed spec fails at the user's line)
        return placed

    @property
    def pin(self):
        """Where the kernel is pinned, parsed (a :class:`~devicejoblib._specs.Placement`;
        on first use, so that a worker process that never registered a custom device
        kind can unpickle a kernel pinned to it)."""
        pin = self._pin
        if pin is None:
            pin = self._pin = Placement.parse(self.placement)
        return pin

    def _placed(self, device):
        placed = Kernel(self._cpu, self._cuda, nogil=self.nogil, placement=device,
                        wraps=self.__wrapped__, batched=self._batched, setup=self._setup)
        placed._cuda_library = self._cuda_library
        placed._setup_args = self._setup_args
        placed._base = self
        return placed

    def __call__(self, *args, **kwargs):
        device = bound_device()
        if device is None:
            # called by joblib's loop for Parallel(n_jobs=1) with the device backend:
            # routed, run in this thread
            backend = _sequential_caller(sys._getframe(1))
            if backend is not None:
                return backend.run_in_caller(self, args, kwargs)
        return self.run_on(device, args, kwargs)

    def run_on(self, device, args, kwargs):
        """Run the implementation for ``device`` (None: the CPU) in the calling thread,
        which is bound to that device."""
        if self._setup is not None:
            args = (self.state(), *args)
        if device is None or device.platform.runs != GPU_IMPLEMENTATION or self._cuda is None:
            if self._cpu is None:
                raise DeviceUnavailableError(
                    f"kernel {self.__name__!r} has only a GPU implementation: run it through "
                    "Parallel with the 'device' backend on a GPU (real or simulated)")
            return self._cpu(*args, **kwargs)
        args, kwargs = device.platform.to_device(args, kwargs, device, self._cuda_library)
        return self._cuda(*args, **kwargs)

    def __repr__(self):
        where = f" on {self.placement!r}" if self.placement is not None else ""
        impls = "+".join(n for n, f in (("cpu", self._cpu), ("cuda", self._cuda)) if f)
        return f"<kernel {self.__qualname__} ({impls}){where}>"

    def __reduce__(self):
        base = getattr(self, "_base", None)
        if base is not None:
            return _placed_kernel, (base, self.placement, self._setup_args)
        # By reference where a worker process can import it; a script's (__main__)
        # kernels travel by value, their functions pickled by loky's cloudpickle.
        if self.__module__ != "__main__":
            try:
                if _lookup(self.__module__, self.__qualname__) is self:
                    return _lookup, (self.__module__, self.__qualname__)
            except (ImportError, AttributeError):
                pass
        return Kernel, (self._cpu, self._cuda), {"nogil": self.nogil,
                                                 "_batched": self._batched,
                                                 "_setup": self._setup,
                                                 "_cuda_library": self._cuda_library}

    @property
    def resident_key(self):
        """The name resident state is kept under (the same in every process)."""
        name = f"{self.__module__}.{self.__qualname__}"
        return name if self._setup_args is None else f"{name}[{self._setup_args.token}]"


class BatchedForm:
    """A kernel's batched implementation, the parameters it keeps unstacked, and the
    signature that names every call's arguments (without the resident state, which a
    stateful kernel's implementations take first)."""

    def __init__(self, function, same, signature, stateful=False):
        self.function = function
        self.same = same
        self._full = signature
        self.set_stateful(stateful)

    def set_stateful(self, stateful):
        params = list(self._full.parameters.values())[1 if stateful else 0:]
        unknown = set(self.same) - {p.name for p in params}
        if unknown:
            raise ValueError(f"Invalid same={self.same!r}: {sorted(unknown)} are not "
                             f"parameters of {[p.name for p in params]}")
        self.stateful = stateful
        self.signature = self._full.replace(parameters=params)
        simple = all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
        # parameter names, when positional arguments alone can name every one of them
        self.names = tuple(p.name for p in params) if simple else ()

    def __reduce__(self):
        return BatchedForm, (self.function, self.same, self._full, self.stateful)


_resident = {}
# Reentrant: dropping resident state may run the collector, whose finalizers release
# other backends' holds in the same thread.
_resident_lock = threading.RLock()


def resident_state(kernel, device):
    """``kernel``'s state on ``device``: made by its setup on first use, then reused."""
    key = (kernel.resident_key, device.id)
    state = _resident.get(key, _MISSING)
    if state is _MISSING:
        with _resident_lock:
            state = _resident.get(key, _MISSING)
            if state is _MISSING:
                args = {} if kernel._setup_args is None else kernel._setup_args.kwargs
                state = _resident[key] = kernel._setup(device, **args)
    return state


_holders = {}  # device id -> backends holding it


class ResidentHold:
    """A backend's hold on its GPUs' resident state: the state of a device is dropped
    when the last backend holding that device lets go (a one-off Parallel call ending
    inside a parallel_config block does not discard the block's model weights)."""

    def __init__(self, device_ids):
        self.device_ids = frozenset(device_ids)
        self.held = False
        self.acquire()

    def acquire(self):
        with _resident_lock:
            if not self.held:
                self.held = True
                for device_id in self.device_ids:
                    _holders[device_id] = _holders.get(device_id, 0) + 1

    def release(self):
        with _resident_lock:
            if not self.held:
                return
            self.held = False
            for device_id in self.device_ids:
                _holders[device_id] -= 1
                if not _holders[device_id]:
                    del _holders[device_id]
                    for key in [k for k in _resident if k[1] == device_id]:
                        _resident.pop(key, None)


_MISSING = object()


def _lookup(module, qualname):
    """The object named ``qualname`` in ``module`` (how kernels travel to processes)."""
    target = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _placed_kernel(base, placement, setup_args=None):
    placed = base._placed(placement)
    placed._setup_args = setup_args
    return placed


def _sequential_caller(frame):
    """The backend whose ``Parallel(n_jobs=1)`` loop called a kernel from ``frame``, if
    it routes such calls (``runs_in_caller``), else None. joblib's adapters are loaded
    by the backend: before one exists, no such loop can be the caller."""
    adapters = sys.modules.get(f"{__package__}._joblib_adapters")
    if adapters is None:
        return None
    backend = adapters.sequential_backend(frame)
    return backend if getattr(backend, "runs_in_caller", False) else None
