"""The base class of platforms: what a kind of device does differently from another."""

from __future__ import annotations

import abc
import contextlib
import functools
import importlib.util
import time

#: The implementations a kernel may have; a platform ``runs`` one of them.
CPU_IMPLEMENTATION, GPU_IMPLEMENTATION = IMPLEMENTATIONS = ("cpu", "cuda")


class Platform(abc.ABC):
    """One kind of device: how its devices are found, bound, timed and fed.

    Subclass it, set the class attributes and :meth:`probe`, override the hooks that
    differ from the defaults (those of a device computing on the host with NumPy), and
    :func:`devicejoblib.register` an instance. Routing, batching, fusion and the workers
    ask a device's platform; they never test which platform it is.

    Attributes
    ----------
    name : str
        Unique name in the registry, shown as a device's ``provider``.
    kind : str
        The device kind in device specs and ids (``"cpu"``, ``"cuda"``).
    spellings : tuple of str
        Words accepted for ``kind`` in device specs (``("cuda", "gpu")``).
    runs : {"cpu", "cuda"}
        Which of a kernel's implementations (and batched forms) its devices run.
    is_gpu : bool
        Its devices get a worker thread each; calls with a GPU implementation go there.
    simulated : bool
        Host-backed stand-ins for GPUs, made on request (``probe(count=...)``), never
        discovered.
    package : str or None
        The module that must be importable for the platform to be probed.
    """

    name = ""
    kind = ""
    spellings: tuple[str, ...] = ()
    runs = "cpu"
    is_gpu = True
    simulated = False
    #: Its devices are numbered (``cuda:0``...); False for a kind with one device (CPU).
    indexed = True
    package: str | None = None
    #: Warn once when the package is installed but finds no device (it is installed for
    #: nothing else).
    warn_when_unusable = False

    @abc.abstractmethod
    def probe(self, **settings):
        """The devices of this platform: ``(list of property dicts, versions dict)``
        (a platform whose :meth:`probers` are others asks them).

        Each dict holds :class:`~devicejoblib.Device` fields (``index``, ``name``,
        ``memory_total``...). May raise: discovery turns the error into a note.
        """

    # --- discovery -----------------------------------------------------------------------

    def installed(self):
        """Whether :attr:`package` can be imported (without importing it)."""
        return self.package is None or importlib.util.find_spec(self.package) is not None

    def hidden_by_user(self):
        """Why the user's settings hide every device (no warning then), or None."""
        return None

    def unavailable_reason(self):
        """Why no device can be used, as words following the package's name
        (``"installed but no CUDA driver: ..."``), or None."""
        return None

    @functools.cache  # noqa: B019  (platforms are registered singletons, never freed)
    def is_available(self):
        """Whether this platform has a usable device; cached, never raises."""
        try:
            return bool(self.installed() and self.hidden_by_user() is None
                        and self.unavailable_reason() is None and self.probe()[0])
        except Exception:
            return False

    # --- a worker thread -------------------------------------------------------------------

    def bind(self, device):
        """Bind the calling thread to ``device``; return the function that waits until
        the work this thread queued on it is done."""
        return _nothing_to_wait_for

    def bound(self, device):
        """Context that binds the calling thread to ``device`` for one call and restores
        its previous device after (``Parallel(n_jobs=1)`` runs GPU calls in the
        caller's thread); yields the function that waits for the call's queued work."""
        return contextlib.nullcontext(_nothing_to_wait_for)

    def synchronize(self, device=None):
        """Wait for the work the calling thread queued on its device."""
        self.library_for(device).synchronize()

    def start_timer(self, device):
        """Start timing a launch on ``device``; the returned function gives its seconds."""
        return wall_timer()

    def start_cost_timer(self, device):
        """Start timing a worker thread's group of calls on ``device`` as the placement
        model counts it: the device's work, not the thread's waits for other threads.
        The returned function, called once the group's work is done, gives its
        seconds. The wall clock here."""
        return wall_timer()

    def simulate_launch(self, device, arguments=()):
        """Stand for a launch's fixed cost and its device memory, given the values it
        moves to the device (simulated devices only)."""

    def thread_limits(self, n_threads):
        """Context that limits the process's native thread pools (BLAS) while
        ``n_threads`` threads of this platform compute on the host at once."""
        return contextlib.nullcontext()

    def limit_thread(self, n_threads):
        """Limit the calling thread's own native pools (OpenMP), at the start of one of
        ``n_threads`` threads of this platform computing on the host."""

    # --- data: the array libraries it serves ----------------------------------------

    def probers(self):
        """What lists this platform's devices: objects with ``name``, ``package``,
        ``installed()``, ``unavailable_reason()``, ``probe()`` and
        ``warn_when_unusable`` tried in turn, the first that finds devices being their
        ``provider`` (the platform itself here; CUDA's are its array libraries)."""
        return (self,)

    def library_for(self, device=None, name=None):
        """The array library a call on ``device`` gets for an implementation written
        for library ``name`` (None: the device's default, NumPy here)."""
        from ..arrays import NUMPY, get_array_library

        return NUMPY if name is None else get_array_library(name)

    def array_module(self, device=None):
        """The array module of code running on ``device`` (its default library's)."""
        return self.library_for(device).module()

    def to_device(self, args, kwargs, device=None, library=None):
        """A call's arguments as an implementation written for ``library`` receives
        them on ``device`` (host arrays moved by that library)."""
        library = self.library_for(device, library)
        if not library.moves_arrays:
            return args, kwargs
        move = library.to_device
        return tuple(map(move, args)), {k: move(v) for k, v in kwargs.items()}

    def to_host(self, result, device, keep_on_device=False):
        """One result value as the caller receives it (on the host unless kept)."""
        from ..arrays import library_of

        library = library_of(result)
        return result if library is None else library.to_host(result, keep_on_device)

    def empty_like(self, array, device=None):
        """An uninitialised array like ``array``, on the calling thread's device."""
        return self.library_for(device).empty_like(array)

    # --- memory ---------------------------------------------------------------------------

    def is_device_lost(self, error):
        """Whether ``error`` leaves the device unusable (a sticky error): its worker
        stops, and routing sends its calls elsewhere."""
        return False

    def is_out_of_memory(self, error):
        """Whether ``error`` means the device ran out of memory."""
        return isinstance(error, MemoryError)

    def free_cached_memory(self):
        """Return the memory pool's cached blocks to the device (after out-of-memory)."""

    # --- Numba CUDA kernels ------------------------------------------------------------------

    def runs_numba_cuda(self):
        """Whether ``@numba.cuda.jit`` kernels can be launched on this platform."""
        return False

    def numba_launch_lock(self):
        """A context held around each Numba CUDA launch (the simulator's lock)."""
        return contextlib.nullcontext()

    def launch_numba(self, kernel, blocks, threads, *args, device=None):
        """Launch a Numba CUDA ``kernel`` with ``blocks`` x ``threads`` on the calling
        thread's device (and stream: on a CUDA GPU whose library is CuPy, CuPy's)."""
        with self.numba_launch_lock():
            kernel[blocks, threads](*args)

    def __repr__(self):
        return f"<platform {self.name!r}: {self.kind} devices>"

    def __reduce__(self):
        return _restore, (self.name, type(self))


#: The registry's storage (name -> Platform), filled by ``devicejoblib.register``.
REGISTERED: dict[str, Platform] = {}


def _restore(name, cls):
    """A platform as unpickled: the registered one of that name and class where this
    process has one (worker processes import devicejoblib, not the user's register()
    call), else a new instance of the class."""
    platform = REGISTERED.get(name)
    return platform if type(platform) is cls else cls()


def _nothing_to_wait_for():
    return None


def wall_timer():
    """A function giving the seconds since this call."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def thread_timer():
    """A function giving the calling thread's CPU seconds since this call."""
    start = time.thread_time()
    return lambda: time.thread_time() - start
