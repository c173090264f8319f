"""Kernels for the backend tests, importable by loky worker processes."""

import os
import threading
import time

import numpy as np

from devicejoblib import array_module, current_device, kernel


def where():
    """(device id, process id, thread name) of the calling code."""
    return current_device().id, os.getpid(), threading.current_thread().name


@kernel
def scale(x, factor=2):
    return x * factor


@scale.cuda
def _(x, factor=2):
    return x * factor


@kernel
def locate(tag):
    return (tag, *where())


@locate.cuda
def _(tag):
    return (tag, *where())


@kernel(nogil=True)
def locate_nogil(tag):
    return (tag, *where())


@kernel
def cpu_only(x):
    return x + 1


@kernel(gpu_only=True)
def gpu_only(x):
    return x - 1


@kernel(portable=True)
def norms(x):
    xp = array_module()
    return xp.sqrt((xp.asarray(x) ** 2).sum(axis=-1))


@kernel
def fails_on(x, bad):
    if x == bad:
        raise ValueError(f"bad input {x}")
    return x


@fails_on.cuda
def _(x, bad, delay=0.0):
    time.sleep(delay)
    if x == bad:
        raise ValueError(f"bad input {x}")
    return x


def plain_where(tag):
    return (tag, *where())


def plain_add(a, b):
    return np.add(a, b)


# --- kernels with batched forms (fusion) ------------------------------------------------

#: (form, number of calls) per batched launch, appended by the batched forms below.
LAUNCHES = []
#: The ``steps`` each fused logistic launch received (a ``same`` parameter: unstacked).
STEPS_SEEN = []


def _iterate(x, r, steps):
    for _ in range(steps):
        x = r * x * (1 - x)
    return x


@kernel
def logistic(x0, r, steps=50):
    """Iterate the logistic map: Python-level work per call."""
    return _iterate(x0, r, steps)


@logistic.cuda
def _(x0, r, steps=50):
    return _iterate(x0, r, steps)


@logistic.batched(same=("steps",))
def _(x0, r, steps=50):
    LAUNCHES.append(("logistic", len(x0)))
    STEPS_SEEN.append(steps)
    return _iterate(x0, r, steps)


@kernel(portable=True)
def saxpy(a, x, y):
    return a * x + y


@saxpy.batched
def _(a, x, y):
    LAUNCHES.append(("saxpy", len(a)))
    return a.reshape(-1, *[1] * (x.ndim - 1)) * x + y  # one scale per stacked call


@kernel(portable=True)
def moments(x):
    """Two results per call: a tuple."""
    return x.sum(), (x * x).sum()


@moments.batched(device="cuda")
def _(x):
    LAUNCHES.append(("moments", len(x)))
    return x.sum(axis=1), (x * x).sum(axis=1)


@kernel(portable=True)
def checked_sqrt(x):
    if x < 0:
        raise ValueError(f"negative input {x}")
    return x**0.5


@checked_sqrt.batched
def _(x):
    LAUNCHES.append(("checked_sqrt", len(x)))
    if (x < 0).any():
        raise ValueError("a negative input in the batch")
    return x**0.5


MAX_FUSED_BEFORE_OOM = 12


@kernel(portable=True)
def big(x):
    return x * 3


@big.batched
def _(x):
    if len(x) > MAX_FUSED_BEFORE_OOM:
        raise MemoryError(f"{len(x)} calls do not fit")
    LAUNCHES.append(("big", len(x)))
    return x * 3


# --- resident state ---------------------------------------------------------------------

@kernel
def resident_probe(state, tag):
    """(tag, the state this call received, where it ran)."""
    return tag, state, where()


@resident_probe.cuda
def _(state, tag):
    return tag, state, where()


@resident_probe.setup
def _(device):
    import uuid

    return (device.id, os.getpid(), uuid.uuid4().hex)


@kernel(portable=True)
def big_cuda_error(x):
    return x * 3


@big_cuda_error.batched
def _(x):
    if len(x) > MAX_FUSED_BEFORE_OOM:  # how Numba's CudaAPIError reports it
        raise RuntimeError("[2] Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY")
    LAUNCHES.append(("big", len(x)))
    return x * 3


#: calls of `flaky_memory` made so far (it runs out of memory once, on x == 13)
FLAKY_CALLS = []


@kernel(portable=True)
def flaky_memory(x):
    FLAKY_CALLS.append(x)
    if x == 13 and FLAKY_CALLS.count(13) == 1:
        raise MemoryError("out of memory, once")
    return x + 1


def _blas_threads():
    from threadpoolctl import threadpool_info

    return max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"),
               default=None)


@kernel(portable=True)
def blas_threads(tag):
    """(device id, the most threads a BLAS library of this process may use)."""
    return current_device().id, _blas_threads()


@kernel(nogil=True)
def blas_threads_nogil(tag):
    return current_device().id, _blas_threads()


class CollectsWhenDropped:
    """Resident state whose destruction runs the garbage collector."""

    def __del__(self):
        import gc

        gc.collect()


@kernel(portable=True)
def collecting_probe(state, tag):
    return tag


@collecting_probe.setup
def _(device):
    return CollectsWhenDropped()


@kernel(portable=True)
def nested_backend(tag):
    """The backend a Parallel call made inside this call would use, by class and level."""
    from joblib.parallel import get_active_backend

    backend, n_jobs = get_active_backend()
    return type(backend).__name__, backend.nesting_level, n_jobs


@kernel
def too_big_for_gpu(x):
    """A sum whose GPU implementation runs out of memory on more than 1,000 values."""
    return float(np.sum(x))


@too_big_for_gpu.cuda
def _(x):
    if x.size > 1000:
        raise MemoryError("out of device memory (simulated)")
    return float(x.sum())


@kernel(portable=True)
def doubled(x):
    """Twice ``x``: as many bytes out as in."""
    return x * 2


@doubled.batched
def _(x):
    LAUNCHES.append(("doubled", len(x)))
    return x * 2


# --- for clusters: importable by Dask workers (the tests folder is on their path) ------

def plain(i):
    """(i, the process it ran in)."""
    return i, os.getpid()


def _slow_locate(tag):
    time.sleep(0.02)
    return (tag, *where())


@kernel
def slow_kernel(tag):
    """``locate`` after 20 ms."""
    return _slow_locate(tag)


@slow_kernel.cuda
def _(tag):
    return _slow_locate(tag)


# --- learned placement: costs that differ per device by construction -------------------
#
# A GPU implementation below charges its cost (charge()): simulated GPUs whose cost timer
# is scripted_cost_timer (script_gpu_costs()) give the placement model exactly that, under
# any load. A CPU implementation's cost is its worker's wall time (the CPU pool times its
# parts by the clock): a sleep, which load can only lengthen, never shorten.

_charged = threading.local()


def charge(seconds):
    """Charge the calling thread's scripted cost timer ``seconds``, and spend them asleep
    (a GPU worker takes a group's cost as at most its wall time; a sleep is never short)."""
    time.sleep(seconds)
    _charged.seconds = charged() + seconds


def charged():
    """The seconds the calling thread charged so far."""
    return getattr(_charged, "seconds", 0.0)


def scripted_cost_timer(device):
    """A cost timer (``Platform.start_cost_timer``) giving the seconds the calling thread
    charged since it started, whatever the clocks say."""
    start = charged()
    return lambda: charged() - start


def script_gpu_costs(setattr=setattr):
    """Make simulated GPUs time their calls by scripted_cost_timer (in a test, pass
    ``monkeypatch.setattr`` to undo it after)."""
    import devicejoblib

    setattr(devicejoblib.get_platform("simulator"), "start_cost_timer", scripted_cost_timer)


@kernel
def modelled(n):
    """A call of size ``n``: on the CPU, 10 us per unit asleep, none under 1 ms (a small
    call is the worker's own 20-60 us); on a GPU, 3 ms charged, whatever the size.

    (A sleep that short is no cost to script with: the CPU pool timed 0.1 ms asleep at
    0.2 ms, and at 3.5 ms under load, the GIL taken back from busy threads after it.)"""
    if n * 1e-5 >= 1e-3:
        time.sleep(n * 1e-5)
    return n, current_device().id


@modelled.cuda
def _(n):
    charge(3e-3)
    return n, current_device().id


_set_up = threading.local()


@kernel
def set_up_per_thread(i):
    """2 ms asleep a call on the CPU; 0.1 ms charged on a GPU, once a worker thread's first
    call has charged 0.3 s of setup there (as a fresh thread's first CuPy launch pays)."""
    time.sleep(2e-3)
    return i, current_device().id


@set_up_per_thread.cuda
def _(i):
    if not getattr(_set_up, "done", False):
        _set_up.done = True
        charge(0.3)
    charge(1e-4)
    return i, current_device().id
