"""Array libraries, the axis beside device kinds: a registry of their own, a kernel
implementation written for one gets that library's arrays on any device kind, results
come back through it, its arrays send calls to the device they live on, and a GPU seen
through several libraries is one device."""

import numpy as np
import pytest

import devicejoblib
from devicejoblib import (
    ArrayLibrary,
    DeviceBackend,
    Parallel,
    current_device,
    delayed,
    kernel,
    register_array_library,
    simulate_gpus,
)
from devicejoblib.arrays import device_array_types
from devicejoblib.arrays.base import ArrayLibrary as BaseLibrary
from test_platforms import FakeAccelerator


class Tagged(np.ndarray):
    """An array of the "tagged" library, living on ``home``."""

    home = None


class TaggedLibrary(ArrayLibrary):
    """A library whose arrays are NumPy arrays tagged with the device they live on."""

    name = "tagged"
    serves = ("cuda",)

    def array_types(self):
        return (Tagged,)

    def home_of(self, value):
        return value.home

    def to_device(self, value):
        if isinstance(value, np.ndarray) and not isinstance(value, Tagged):
            tagged = value.view(Tagged)
            tagged.home = current_device().id
            return tagged
        return value

    def to_host(self, value, keep_on_device=False):
        return value if keep_on_device else np.asarray(value).view(np.ndarray)


@pytest.fixture
def tagged(registry):
    """The tagged library and the fake "xpu" device kind, registered for the test."""
    devicejoblib.register(FakeAccelerator())
    return register_array_library(TaggedLibrary())


@kernel
def kind_of(x):
    return "host", type(x).__name__, x * 2


@kind_of.cuda(library="tagged")
def _(x):
    assert isinstance(x, Tagged) and x.home == current_device().id
    return "tagged", type(x).__name__, x * 2


@kernel
def where(x):
    return "cpu"


@where.cuda
def _(x):
    return current_device().id


def test_the_registry_lists_the_libraries_and_refuses_what_is_not_one():
    names = [lib.name for lib in devicejoblib.array_libraries()]
    assert names[:3] == ["numpy", "cupy", "numba"]
    assert devicejoblib.get_array_library("cupy").serves == ("cuda",)
    with pytest.raises(TypeError, match="Invalid array library 'jax'"):
        register_array_library("jax")
    with pytest.raises(ValueError, match="Invalid array library 'jax': registered array "
                       "libraries are 'numpy', 'cupy', 'numba'"):
        devicejoblib.get_array_library("jax")


def test_an_implementation_names_a_registered_library():
    k = kernel(lambda x: x)
    with pytest.raises(TypeError, match="Invalid library=3"):
        k.cuda(library=3)
    k.cuda(library="torchh")(lambda x: x)  # (it may be registered before it runs)
    with simulate_gpus(1), pytest.raises(ValueError, match="Invalid array library 'torchh'"):
        Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(delayed(k)(1) for _ in "ab")


def test_an_implementation_gets_its_librarys_arrays_and_results_come_back(no_gpu, tagged):
    out = Parallel(n_jobs=2, backend=DeviceBackend(placement="xpu"))(
        delayed(kind_of)(np.full(3, i)) for i in range(8))
    assert [(lib, name) for lib, name, _ in out] == [("tagged", "Tagged")] * 8
    assert all(type(r) is np.ndarray and r.tolist() == [2 * i] * 3
               for i, (_, _, r) in enumerate(out))


def test_a_librarys_array_sends_its_call_to_the_device_it_lives_on(no_gpu, tagged):
    on_second = np.ones(2).view(Tagged)
    on_second.home = "xpu:1"
    out = Parallel(n_jobs=2, backend=DeviceBackend())(
        [delayed(where)(on_second)] * 6 + [delayed(where)(1)])
    assert out[:6] == ["xpu:1"] * 6


class Late(np.ndarray):
    home = None


class LateLibrary(TaggedLibrary):
    """A library whose device arrays can appear without a module being imported."""

    name = "late"
    made = False

    def array_types(self):
        return (Late,) if self.made else ()


def test_a_library_says_when_its_arrays_may_have_appeared(no_gpu, tagged):
    late = register_array_library(LateLibrary())
    on_second = np.ones(2).view(Late)
    on_second.home = "xpu:1"
    Parallel(n_jobs=2, backend=DeviceBackend())(delayed(where)(i) for i in range(4))
    late.made = True
    # (routing asks the libraries again only once told, or after a module's import)
    assert Late not in device_array_types()
    devicejoblib.array_types_changed()
    out = Parallel(n_jobs=2, backend=DeviceBackend())([delayed(where)(on_second)] * 6)
    assert out == ["xpu:1"] * 6


class ListsTwo(BaseLibrary):
    """A library that lists two GPUs of the fake kind."""

    serves = ("cuda",)
    lists_devices = True

    def __init__(self, name):
        self.name = name

    def probe(self):
        return [{"index": i, "name": f"seen by {self.name}"} for i in range(2)], {}


def test_a_gpu_seen_through_two_libraries_is_one_device(registry, no_gpu):
    first, second = ListsTwo("first"), ListsTwo("second")

    class TwoWays(devicejoblib.get_platform("cuda").__class__):
        name, kind, spellings = "twoways", "xpu", ("xpu",)

        def probers(self):
            return (first, second)

        def unavailable_reason(self):
            return None

    devicejoblib.register(TwoWays())
    found = [d for d in devicejoblib.devices() if d.kind == "xpu"]
    assert [(d.id, d.provider, d.name) for d in found] == [
        ("xpu:0", "first", "seen by first"), ("xpu:1", "first", "seen by first")]


class Binds(BaseLibrary):
    """A library that lists two GPUs of the fake kind, and records (or fails) binding."""

    serves = ("cuda",)
    lists_devices = True

    def __init__(self, name, fails=False):
        self.name, self.fails, self.bound_to = name, fails, []

    def probe(self):
        return [{"index": i, "name": f"seen by {self.name}"} for i in range(2)], {}

    def bind(self, device, stream=None):
        if self.fails:
            raise RuntimeError(f"{self.name} sees no such device")
        self.bound_to.append(device.id)
        return (lambda: None), stream


def test_a_worker_binds_the_other_loaded_libraries_at_best(registry, no_gpu):
    # a library that also lists GPUs but cannot bind this one (a CuPy built for another
    # CUDA, say) must not cost the device whose own library binds it
    own, broken = Binds("own"), Binds("broken", fails=True)

    class Kind(devicejoblib.get_platform("cuda").__class__):
        name, kind, spellings = "kind", "xpu", ("xpu",)

        def probers(self):
            return (own,)

        def unavailable_reason(self):
            return None

    register_array_library(broken)
    register_array_library(own)
    devicejoblib.register(Kind())
    out = Parallel(n_jobs=2, backend=DeviceBackend(placement="xpu"))(
        delayed(where)(i) for i in range(8))
    assert set(out) == {"xpu:0", "xpu:1"}
    assert sorted(own.bound_to) == ["xpu:0", "xpu:1"]
