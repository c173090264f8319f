"""The base class of array libraries: how one library's arrays live on devices."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys

#: The registry's storage (name -> ArrayLibrary), filled by ``register_array_library``.
REGISTERED: dict = {}


class ArrayLibrary:
    """One array library (NumPy, CuPy, Numba device arrays, PyTorch...): how its arrays
    move to and from a device, which device an array lives on, how calls' arrays stack
    for a fused launch, how a worker thread bound to a device uses the library, and how
    its memory pool is freed after out-of-memory.

    Subclass it, set the class attributes, override the hooks that differ from the
    defaults (host arrays, nothing to bind or free), and
    :func:`devicejoblib.register_array_library` an instance. A kernel implementation
    names the library it is written for (``@k.cuda(library="cupy")``); a device kind
    (:class:`~devicejoblib.Platform`) serves every library registered for its kind.

    Attributes
    ----------
    name : str
        Unique name in the registry (what ``library=`` names).
    package : str or None
        The module that must be importable for the library to be used.
    serves : tuple of str
        The implementations (``"cpu"``, ``"cuda"``) written for it: the devices of
        platforms that run those hold its arrays.
    lists_devices : bool
        It can list the devices of the kinds it serves (:meth:`probe`).
    warn_when_unusable : bool
        A library that lists GPUs is installed for GPUs and nothing else: warn once
        when it finds none.
    """

    name = ""
    package: str | None = None
    serves: tuple[str, ...] = ("cpu",)
    lists_devices = False
    warn_when_unusable = False
    #: Whether :meth:`to_device` moves anything: a call's arguments are not walked for
    #: a library that leaves them as they are (derived for each subclass that does not
    #: set it: whether it overrides ``to_device``).
    moves_arrays = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "moves_arrays" not in cls.__dict__:
            cls.moves_arrays = cls.to_device is not ArrayLibrary.to_device

    # --- availability, and listing a kind's devices (libraries that can) ---------------

    def installed(self):
        """Whether :attr:`package` can be imported (without importing it)."""
        return self.package is None or importlib.util.find_spec(self.package) is not None

    def loaded(self):
        """Whether this process imported the library already (its arrays may exist)."""
        return self.package is None or sys.modules.get(self.package) is not None

    def unavailable_reason(self):
        """Why the library cannot list devices, as words after its package's name, or
        None."""
        return None

    def probe(self):
        """The devices of its kind it sees: ``(list of property dicts, versions)``;
        ``([], {})`` for a library that cannot list devices. May raise."""
        return [], {}

    def module(self):
        """The array module of code written for this library."""
        return importlib.import_module(self.package or "numpy")

    # --- a worker thread bound to a device -------------------------------------------

    def bind(self, device, stream=None):
        """Make ``device`` the library's current device on the calling thread, on
        ``stream`` (a stream another library of the thread made) or one of its own:
        ``(function that waits for the thread's queued work, the stream)``."""
        return _nothing_to_wait_for, stream

    def bound(self, device):
        """Context binding the calling thread to ``device`` for one call; yields the
        function that waits for the call's queued work."""
        return contextlib.nullcontext(_nothing_to_wait_for)

    def synchronize(self):
        """Wait for the work the calling thread queued through this library."""

    # --- arrays ------------------------------------------------------------------------

    def array_types(self):
        """Types of its arrays that live on a device (data affinity); empty until the
        library is imported, so that routing skips looking at arguments. Asked again
        once a module was imported; a library whose arrays can appear otherwise calls
        :func:`~devicejoblib.arrays.array_types_changed` when they may have."""
        return ()

    def home_of(self, value):
        """The id of the device an array of :meth:`array_types` lives on."""
        return None

    def to_device(self, value):
        """A host value (a NumPy array) as the bound device's array, else unchanged."""
        return value

    def to_host(self, value, keep_on_device=False):
        """One of its arrays as the caller receives it: on the host unless kept."""
        return value

    def stack(self, values):
        """Calls' arrays stacked along a new leading axis, on the bound device."""
        xp = self.module()
        import numpy as np

        if all(isinstance(v, np.ndarray) for v in values):
            return xp.asarray(np.stack(values))  # one host-to-device copy for the group
        return xp.stack([xp.asarray(v) for v in values])

    def empty_like(self, array):
        """An uninitialised array like ``array``, on the bound device."""
        return self.module().empty_like(array)

    # --- memory ------------------------------------------------------------------------

    def is_out_of_memory(self, error):
        """Whether ``error`` is this library's out-of-memory error."""
        return False

    def free_cached_memory(self):
        """Return the memory pool's cached blocks to the device (after out-of-memory)."""

    def __repr__(self):
        return f"<array library {self.name!r}>"

    def __reduce__(self):
        return _restore, (self.name, type(self))


def _nothing_to_wait_for():
    return None


def _restore(name, cls):
    """An array library as unpickled: the registered one, else a new instance."""
    library = REGISTERED.get(name)
    return library if type(library) is cls else cls()
