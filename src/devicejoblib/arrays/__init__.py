"""Array libraries: one object per library whose arrays can live on a device, and the
registry they are found in (the other axis beside device kinds, ``_platforms``).

A kernel implementation names the library it is written for; a device kind serves
every registered library of its kind. Adding PyTorch or JAX is one
:class:`ArrayLibrary` subclass and one :func:`register_array_library` call.
"""

from __future__ import annotations

import sys
import threading

from .base import REGISTERED, ArrayLibrary
from .cupy_library import CuPyLibrary
from .numba_library import NumbaLibrary
from .numpy_library import NumPyLibrary
from .torch_library import TorchLibrary

_lock = threading.Lock()
_changes = 0  # bumped where the device array types may have changed
_found = ((None, None), ())  # ((len(sys.modules), _changes) when asked, the types)


def register_array_library(library):
    """Add an array library (an instance of an :class:`ArrayLibrary` subclass).

    Libraries of a device kind are tried in registration order: the first installed
    one lists that kind's devices and is the default of implementations that name no
    library. Registering a name again replaces that library.

    Parameters
    ----------
    library : ArrayLibrary

    Returns
    -------
    ArrayLibrary
        ``library``.

    Raises
    ------
    TypeError
        ``library`` is not an ArrayLibrary instance.
    ValueError
        Its ``name`` or ``serves`` is missing.
    """
    if not isinstance(library, ArrayLibrary):
        raise TypeError(f"Invalid array library {library!r}: expected an instance of a "
                        "devicejoblib.ArrayLibrary subclass")
    if not library.name or not library.serves:
        raise ValueError(f"Invalid array library {library!r}: name and serves must be set")
    with _lock:
        REGISTERED[library.name] = library
    array_types_changed()
    return library


def array_libraries(kind=None):
    """The registered array libraries (of device kind ``kind``), in registration order."""
    return tuple(lib for lib in REGISTERED.values() if kind is None or kind in lib.serves)


def get_array_library(name):
    """The registered array library called ``name``.

    Raises
    ------
    ValueError
        None of that name is registered; the message lists those that are.
    """
    try:
        return REGISTERED[name]
    except KeyError:
        raise ValueError(f"Invalid array library {name!r}: registered array libraries are "
                         f"{', '.join(map(repr, REGISTERED))}") from None


def library_of(value):
    """The library whose device array ``value`` is, or None (a host value)."""
    for library in REGISTERED.values():
        types = library.array_types()
        if types and isinstance(value, types):
            return library
    return None


def device_array_types():
    """Array types that may live on a device in this process (none before any could
    exist, so that routing skips looking at arguments).

    The libraries are asked again once a module was imported (their arrays appear with
    their modules) or :func:`array_types_changed` was called; until then, the answer
    is kept (routing asks for every batch).
    """
    global _found
    asked, types = _found
    now = len(sys.modules), _changes
    if asked != now:
        types = ()
        for library in REGISTERED.values():
            types += library.array_types()
        _found = now, types  # (a change while asking: ``now`` is stale, asked again)
    return types


def array_types_changed():
    """Have :func:`device_array_types` ask the libraries again: for a library whose
    device arrays can appear other than by importing a module."""
    global _changes
    _changes += 1


def home_of(value):
    """The id of the device that array ``value`` lives on, or None."""
    library = library_of(value)
    return None if library is None else library.home_of(value)


NUMPY = register_array_library(NumPyLibrary())
register_array_library(CuPyLibrary())
register_array_library(NumbaLibrary())
register_array_library(TorchLibrary())

__all__ = [
    "NUMPY",
    "ArrayLibrary",
    "CuPyLibrary",
    "NumPyLibrary",
    "NumbaLibrary",
    "TorchLibrary",
    "array_libraries",
    "array_types_changed",
    "device_array_types",
    "get_array_library",
    "home_of",
    "library_of",
    "register_array_library",
]
