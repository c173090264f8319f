"""A kernel's setup arguments (``kernel.setup_with(checkpoint=..., model=...)``): given
once, used by the setup that makes the kernel's resident state on each device, and
sent to each worker process once — in a file the process reads when it first makes the
state — never with every call."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tempfile
import threading
import weakref

_loaded = {}  # token -> the arguments, in a process that read them from their file
_lock = threading.Lock()


class SetupArgs:
    """Keyword arguments for a kernel's setup, and the token that names them (the same
    in every process: resident state is kept per kernel and token)."""

    def __init__(self, kwargs):
        self._kwargs = dict(kwargs)
        try:
            data = pickle.dumps(self._kwargs, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # not picklable: fine on GPU threads, refused by processes
            data = None
        self.token = hashlib.sha1(data).hexdigest()[:16] if data is not None \
            else f"local-{id(self):x}"
        self._data = data
        self._path = None

    @property
    def kwargs(self):
        """The arguments (read from their file on first use in a worker process)."""
        if self._kwargs is None:
            with _lock:
                if self.token not in _loaded:
                    with open(self._path, "rb") as file:
                        _loaded[self.token] = pickle.load(file)
            self._kwargs = _loaded[self.token]
        return self._kwargs

    def __reduce__(self):
        return _from_file, (self._file(), self.token)

    def _file(self):
        """The file the arguments are written to for worker processes (once)."""
        if self._path is None:
            if self._data is None:
                raise TypeError(f"the setup arguments {sorted(self._kwargs)} cannot be "
                                "pickled, so they cannot reach a worker process (pass "
                                "picklable values, or run the calls on GPUs or threads)")
            with _lock:
                if self._path is None:
                    descriptor, path = tempfile.mkstemp(prefix="devicejoblib-setup-",
                                                        suffix=".pkl")
                    with os.fdopen(descriptor, "wb") as file:
                        file.write(self._data)
                    weakref.finalize(self, _remove, path)
                    self._path = path
        return self._path

    def __repr__(self):
        return f"<setup arguments {sorted(self.kwargs)}>"


def _from_file(path, token):
    args = SetupArgs.__new__(SetupArgs)
    args._kwargs, args._data, args._path, args.token = _loaded.get(token), None, path, token
    return args


def _remove(path):
    with contextlib.suppress(OSError):
        os.remove(path)
