"""Simulated GPUs fail where a real GPU fails (strict arrays refuse what CuPy refuses)
and, given a real GPU's timing profile, cost what it costs: operations, copies and
synchronisations charged to a device clock (asserted on counts and on that clock)."""

import copy
import json
import sys
import threading

import numpy as np
import pytest

import devicejoblib
from devicejoblib import (
    DeviceBackend,
    Parallel,
    SimulatedDeviceArray,
    array_module,
    delayed,
    kernel,
    simulate_gpus,
)
from devicejoblib._platforms import simulated_clock
from devicejoblib._platforms.profiles import FIELDS, load_profile


def numpy_only_library(values):
    """What scikit-learn's predict and other NumPy-only code do first."""
    return float(np.asarray(values, dtype=float).sum())


def _gpu(function):
    """A kernel whose GPU implementation is ``function`` (its CPU one is the same)."""
    k = kernel(function)
    k.cuda(function)
    return k


implicit_conversion = _gpu(lambda x: np.asarray(x).sum())
numpy_only = _gpu(numpy_only_library)
host_arithmetic = _gpu(lambda x: x + np.ones(3))
host_function = _gpu(lambda x: array_module().exp(np.ones(3)) + x)
on_device = _gpu(lambda x: array_module().exp(array_module().ones(3)) + x)


def both_devices(x):
    other = SimulatedDeviceArray(np.ones(3), "cuda:1")
    return x + other


mixed_devices = kernel(both_devices)
mixed_devices.cuda(both_devices)
mixed_devices = mixed_devices.on("cuda:0")

REFUSED = {
    "np.asarray": (implicit_conversion, TypeError, "Implicit conversion to a NumPy array"),
    "a NumPy-only library": (numpy_only, TypeError, "Implicit conversion"),
    "x + a host array": (host_arithmetic, TypeError, "Unsupported type"),
    "xp.exp(a host array)": (host_function, TypeError, "Unsupported type"),
    "arrays of two devices": (mixed_devices, ValueError, "cuda:1"),
}


@pytest.mark.parametrize("what", REFUSED)
def test_strict_arrays_refuse_what_cupy_refuses_and_say_how_to_fix_it(what):
    function, error, message = REFUSED[what]
    with simulate_gpus(2), pytest.raises(error, match=message) as raised:
        Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(
            delayed(function)(np.arange(3.0)) for _ in range(2))
    assert any(fix in str(raised.value) for fix in ("xp.asarray", "xp.array(x)",
                                                     "strict=False"))


@pytest.mark.parametrize("what", [w for w in REFUSED if w != "arrays of two devices"])
def test_with_strictness_off_the_same_code_gets_numpy_and_passes(what, monkeypatch):
    function = REFUSED[what][0]
    expected = [function(np.arange(3.0)) for _ in range(2)]  # the CPU implementation
    with simulate_gpus(2, strict=False):
        out = Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(
            delayed(function)(np.arange(3.0)) for _ in range(2))
    np.testing.assert_allclose(np.asarray(out, dtype=float), np.asarray(expected, dtype=float))
    monkeypatch.setenv(devicejoblib.SIMULATED_STRICT_ENV, "0")  # the same, from the environment
    with simulate_gpus(1):
        assert not devicejoblib.devices()[1].strict_arrays


@kernel
def inspect_arrays(x, host):
    return None


@inspect_arrays.cuda
def _(x, host):
    xp = array_module()
    y = xp.asarray(host)  # a copy on this device
    return {"type": type(x).__name__, "isinstance ndarray": isinstance(x, np.ndarray),
            "device": x.device.id, "get": type(x.get()).__name__,
            "asnumpy": type(xp.asnumpy(y)).__name__, "sum": float((x * y).sum()),
            "reduction": type(x.sum()).__name__, "np.sum": type(np.sum(x)).__name__,
            "module": xp.get_array_module(x) is xp}


def test_strict_arrays_give_what_cupy_gives():
    with simulate_gpus(2):
        out = Parallel(n_jobs=2, backend=DeviceBackend(placement="cuda:1"))(
            [delayed(inspect_arrays)(np.arange(3.0), np.ones(3))])
    assert out == [{"type": "SimulatedDeviceArray", "isinstance ndarray": False,
                    "device": 1, "get": "ndarray", "asnumpy": "ndarray", "sum": 3.0,
                    "reduction": "SimulatedDeviceArray", "np.sum": "SimulatedDeviceArray",
                    "module": True}]


def test_a_kept_array_refuses_implicit_conversion_on_the_host_too():
    with simulate_gpus(1):
        kept = Parallel(n_jobs=2, backend=DeviceBackend(keep_on_device=True))(
            delayed(on_device)(np.arange(3.0)) for _ in range(2))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(kept[0])
    np.testing.assert_allclose(kept[0].get(), np.e + np.arange(3.0))
    assert kept[0].device_id == "cuda:0" and float(kept[0].sum()) == pytest.approx(
        3 * np.e + 3)


# --- timing profiles -------------------------------------------------------------------

def write_profile(path, **values):
    """A profile file with ``values`` over slow, round defaults."""
    fields = {"host_seconds_per_operation": 1e-5, "kernel_seconds": 1e-3,
              "device_bytes_per_second": 1e9, "flops_per_second": 1e9,
              "host_to_device_bytes_per_second": 1e8,
              "device_to_host_bytes_per_second": 1e8, "transfer_seconds": 2e-3,
              "memory_bytes": 2**30, "multiprocessor_count": 4, **values}
    document = {"format": "devicejoblib simulated GPU profile", "version": 1,
                "name": "slow", "gpu": "a test's",
                "fields": {k: {"value": v, "source": "the test"} for k, v in fields.items()}}
    path.write_text(json.dumps(document))
    return str(path)


def operations(k):
    @kernel
    def chain(x):
        return x

    @chain.cuda
    def _(x):
        for _ in range(k):
            x = x + 1
        return x

    return chain


def test_a_profiles_operation_cost_is_charged_once_per_operation(tmp_path):
    profile = write_profile(tmp_path / "slow.json")
    charged = {}
    for k in (5, 20):
        with simulate_gpus(1, profile=profile):
            device = devicejoblib.devices()[1]
            clock = simulated_clock.clock_of(device)
            before = clock.operations, clock.device_seconds
            backend = DeviceBackend(placement="gpu")
            out = Parallel(n_jobs=2, backend=backend)(
                delayed(operations(k))(np.zeros(4)) for _ in range(3))
            report = backend.report()
        assert all(r.tolist() == [k] * 4 for r in out)
        charged[k] = (clock.operations - before[0], clock.device_seconds - before[1],
                      report["cuda:0"]["seconds"])
    # k operations a call (each at the profile's kernel time, its floor here), three calls
    assert charged[5][0] == 15 and charged[20][0] == 60
    per_call = {k: (c[1] - c[0] * 1e-3) for k, c in charged.items()}  # what copies add
    assert per_call[5] == pytest.approx(per_call[20])  # copies do not depend on k
    # the worker waited for its device's clock: each call took its k operations at least
    assert charged[5][2] >= 15 * 1e-3 and charged[20][2] >= 60 * 1e-3


def test_host_device_copies_cost_the_profiles_bandwidth(tmp_path):
    profile = write_profile(tmp_path / "slow.json")
    with simulate_gpus(1, profile=profile):
        clock = simulated_clock.clock_of(devicejoblib.devices()[1])
        before = clock.transfers, clock.transferred_bytes, clock.device_seconds
        out = Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(
            [delayed(operations(0))(np.zeros(10_000))])  # 80 kB in, 80 kB out
    assert out[0].shape == (10_000,)
    assert (clock.transfers - before[0], clock.transferred_bytes - before[1]) == (2, 160_000)
    # two copies: 2 ms each, and 80 kB at 100 MB/s (0.8 ms) each
    assert clock.device_seconds - before[2] == pytest.approx(2 * (2e-3 + 8e-4))


def test_a_synchronisation_waits_without_holding_the_gil(tmp_path):
    profile = write_profile(tmp_path / "slow.json", kernel_seconds=0.3)
    ticks, done = [0], threading.Event()

    def count():
        while not done.is_set():
            ticks[0] += 1

    switch = sys.getswitchinterval()
    with simulate_gpus(1, profile=profile):
        device = devicejoblib.devices()[1]
        with device.platform.bound(device) as sync:
            xp = device.platform.array_module(device)
            x = xp.asarray(np.ones(3))  # (copied before the counter starts)
            counter = threading.Thread(target=count)
            # longer than the wait: a thread holding the GIL keeps it through the wait
            sys.setswitchinterval(1.0)
            try:
                counter.start()
                y = x + 1  # 0.3 s of device time, queued
                started = ticks[0]
                sync()  # the other thread runs while this one waits for the device
                during = ticks[0] - started
            finally:
                done.set()
                sys.setswitchinterval(switch)
                counter.join()
    assert y.get().tolist() == [2.0] * 3
    assert during > 1000


def test_a_profile_sets_the_memory_and_its_errors_name_the_value(tmp_path):
    profile = write_profile(tmp_path / "small.json", memory_bytes=2**20)
    with simulate_gpus(1, profile=profile):
        assert devicejoblib.devices()[1].memory_total == 2**20
        with pytest.raises(MemoryError, match="out of memory on cuda:0"):
            Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(
                [delayed(operations(1))(np.zeros(2**18))])  # 2 MiB
    with pytest.raises(ValueError, match=r"Invalid profile: Invalid simulated GPU profile "
                       r"'h300': expected the name of a shipped profile \(h200\)"):
        simulate_gpus(1, profile="h300")
    bad = tmp_path / "bad.json"
    write_profile(bad, kernel_seconds=-1)
    with pytest.raises(ValueError, match="field kernel_seconds is -1, expected seconds, "
                       "above 0 and at most 1"):
        simulate_gpus(1, profile=str(bad))
    write_profile(bad, host_seconds_per_operation=8)  # (microseconds meant)
    with pytest.raises(ValueError, match="host_seconds_per_operation is 8"):
        simulate_gpus(1, profile=str(bad))
    write_profile(bad, multiprocessor_count=0.5)
    with pytest.raises(ValueError, match="a positive whole number"):
        simulate_gpus(1, profile=str(bad))


def test_the_shipped_h200_profile_says_where_each_value_came_from():
    profile = load_profile("H200")
    sources = dict(profile.sources)
    assert set(sources) == set(FIELDS) and all(len(s) > 20 for s in sources.values())
    assert 5e-6 <= profile.host_seconds_per_operation <= 12e-6


def test_calibrate_gives_back_a_simulated_gpus_profile(tmp_path):
    from devicejoblib._cli import main

    slow = write_profile(tmp_path / "slow.json", host_seconds_per_operation=2e-4,
                         kernel_seconds=2e-3, device_bytes_per_second=2e9,
                         flops_per_second=5e9)
    out = tmp_path / "measured.json"
    assert main(["calibrate", "--simulated", slow, "--repeat", "3", "--size-mib", "2",
                 "--name", "again", "--output", str(out)]) == 0
    measured = load_profile(str(out))
    assert measured.name == "again" and measured.memory_bytes == 2**30
    assert measured.multiprocessor_count == 4
    assert all(len(source) > 20 for _, source in measured.sources)
    # the simulator holds each figure to its profile's: bounds that cannot flake
    assert measured.host_seconds_per_operation >= 2e-4
    assert measured.kernel_seconds >= 2e-3 * 0.9
    assert measured.device_bytes_per_second <= 2e9 * 1.1
    assert measured.flops_per_second <= 5e9 * 1.1
    assert measured.transfer_seconds >= 2e-3
    # and the wall clock gives back about as much as was put in
    assert measured.device_bytes_per_second >= 2e9 / 3
    assert measured.host_to_device_bytes_per_second == pytest.approx(1e8, rel=0.5)


@pytest.mark.skipif(devicejoblib.is_available("cuda", simulated=False),
                    reason="this machine has a GPU: calibrate would measure it")
def test_calibrate_without_a_gpu_says_what_to_do(capsys):
    from devicejoblib._cli import main

    assert main(["calibrate"]) == 2
    assert "Invalid --device=0: the GPUs of this machine are none" in capsys.readouterr().err


# --- CuPy idioms a new user reaches for (found by trying them) --------------------------

@kernel
def idioms(x, other):
    return None


@idioms.cuda
def _(x, other):
    xp = array_module()
    moved = xp.array(other)  # another device's array, copied here, as CuPy does
    state = [xp.random.seed(5), xp.random.standard_normal(3, dtype=xp.float32)]
    shallow = copy.copy(x)
    shallow[0] = 99.0
    contiguous = xp.ascontiguousarray(xp.stack([x, x]).T)
    with xp.cuda.Device(1):  # arrays made inside live on cuda:1, as with CuPy
        elsewhere = xp.ones(2)
        xp.cuda.Stream.null.synchronize()
    here = xp.ones(2)
    xp.get_default_memory_pool().free_all_blocks()
    out = xp.empty_like(x)
    return {"moved": (moved.device.id, float(moved.sum())),
            "random": (str(state[1].dtype), state[1].get().tolist()),
            "copy": float(x[0]), "contiguous": bool(contiguous.flags.c_contiguous),
            "reduce": float(xp.add.reduce(x)), "outer": xp.multiply.outer(x, x).shape,
            "out": xp.exp(x, out=out) is out, "host": xp.cumsum(x).get(),
            "switched": (elsewhere.device.id, here.device.id)}


def test_the_cupy_idioms_of_a_gpu_implementation_work_as_on_cupy():
    with simulate_gpus(2):
        other = Parallel(n_jobs=2, backend=DeviceBackend(placement="cuda:1",
                                                          keep_on_device=True))(
            [delayed(on_device)(np.zeros(3))])[0]
        runs = [Parallel(n_jobs=2, backend=DeviceBackend(placement="cuda:0",
                                                          keep_on_device=True))(
            [delayed(idioms)(np.arange(3.0), other)])[0] for _ in range(2)]
    first = runs[0]
    assert first["moved"] == (0, pytest.approx(3 * np.e))
    assert first["random"][0] == "float32" and runs[1]["random"] == first["random"]
    assert first["copy"] == 0.0  # copy.copy copied
    assert first["contiguous"] and first["reduce"] == 3.0 and first["outer"] == (3, 3)
    assert first["out"] is True and first["switched"] == (1, 0)
    # a NumPy array the implementation made on purpose comes back as it is, kept or not
    assert type(first["host"]) is np.ndarray and first["host"].tolist() == [0.0, 1.0, 3.0]
