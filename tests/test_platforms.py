"""The registry of platforms (kinds of device): what is derived from it, and a fifth
kind added the documented way, one class and one register() call."""

import pickle
import sys
import threading
import time

import pytest

import devicejoblib
from conftest import saved_samples
from devicejoblib import (
    DEVICE_KINDS,
    DeviceBackend,
    InvalidDeviceError,
    Parallel,
    Platform,
    _platforms,
    current_device,
    delayed,
    kernel,
    parallel_config,
    parse_devices,
)


class FakeAccelerator(Platform):
    """A kind of device no machine has: host-backed, NumPy, one worker thread each."""

    name = "fake"
    kind = "xpu"
    spellings = ("xpu", "fake")
    runs = "cuda"

    def probe(self, **settings):
        return [{"index": i, "name": "fake XPU", "multiprocessor_count": 4}
                for i in range(2)], {"provider": "fake 1.0"}


@kernel
def where(tag):
    return tag, current_device().id, threading.current_thread().name


@where.cuda
def _(tag):
    return tag, current_device().id, threading.current_thread().name


def test_kinds_and_spellings_come_from_the_registry():
    assert dict(DEVICE_KINDS) == {"cpu": ("cpu",), "cuda": ("cuda", "gpu")}
    assert [p.name for p in devicejoblib.platforms()] == ["host", "simulator", "cuda"]
    with pytest.raises(InvalidDeviceError, match="expected one of 'cpu', 'cuda', 'gpu'"):
        parse_devices("tpu")


def test_a_fifth_kind_is_one_class_and_one_register_call(registry, no_gpu):
    devicejoblib.register(FakeAccelerator())
    assert DEVICE_KINDS["xpu"] == ("xpu", "fake")
    found = devicejoblib.devices()
    assert [d.id for d in found] == ["cpu", "xpu:0", "xpu:1"]
    assert [d.provider for d in found[1:]] == ["fake", "fake"]
    assert parse_devices("fake:1") == (found[2],)
    assert devicejoblib.is_available("xpu")
    out = Parallel(n_jobs=2, backend=DeviceBackend(placement="xpu"))(
        delayed(where)(i) for i in range(20))
    assert [tag for tag, _, _ in out] == list(range(20))
    assert {(device, thread) for _, device, thread in out} == {
        ("xpu:0", "devicejoblib-xpu:0"), ("xpu:1", "devicejoblib-xpu:1")}


def test_register_refuses_what_is_not_a_platform_or_clashes(registry):
    with pytest.raises(TypeError, match="Invalid platform 'rocm'"):
        devicejoblib.register("rocm")
    clash = type("Clash", (FakeAccelerator,), {"name": "clash", "spellings": ("gpu",)})
    with pytest.raises(ValueError, match=r"spellings \['gpu'\] already mean 'cuda'"):
        devicejoblib.register(clash())
    odd = type("Odd", (FakeAccelerator,), {"name": "odd", "runs": "tpu"})
    with pytest.raises(ValueError, match="runs='tpu'"):
        devicejoblib.register(odd())


def test_availability_is_cached_and_never_raises():
    class Broken(FakeAccelerator):
        name = "broken"

        def probe(self, **settings):
            raise OSError("driver crashed")

    assert Broken().is_available() is False
    host = devicejoblib.get_platform("host")
    assert host.is_available() is True


@pytest.mark.parametrize("platform", devicejoblib.platforms(), ids=lambda p: p.name)
def test_platforms_travel_as_the_registered_object(platform):
    assert pickle.loads(pickle.dumps(platform)) is platform


def test_unknown_platform_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match="Invalid platform 'rocm': registered platforms "
                       "are 'host', 'simulator', 'cuda'"):
        devicejoblib.get_platform("rocm")


def test_a_platform_unknown_to_the_unpickling_process_comes_back_as_its_class(registry):
    fake = devicejoblib.register(FakeAccelerator())
    data = pickle.dumps(fake)
    del _platforms._PLATFORMS["fake"]  # as in a worker that never ran register()
    restored = pickle.loads(data)
    assert type(restored) is FakeAccelerator and restored.kind == "xpu"


def test_is_available_never_raises_on_a_malformed_setting(monkeypatch):
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATE_GPUS", "two")
    assert devicejoblib.is_available("cuda") is False
    assert devicejoblib.get_platform("simulator").is_available() is False
    with pytest.raises(ValueError, match="DEVICEJOBLIB_SIMULATE_GPUS='two'"):
        devicejoblib.devices()


def test_asking_about_real_gpus_leaves_simulation_alone_in_other_threads():
    from concurrent.futures import ThreadPoolExecutor

    with devicejoblib.simulate_gpus(2):
        with ThreadPoolExecutor(4) as pool:
            real = pool.map(lambda _: devicejoblib.is_available("cuda", simulated=False),
                            range(200))
            seen = pool.map(lambda _: len(devicejoblib.devices()), range(200))
            assert set(seen) == {3}
            assert len(set(real)) == 1
        assert len(devicejoblib.devices()) == 3


class ChargesThreadTime(FakeAccelerator):
    """Charges the cost model its worker thread's CPU time, as the CUDA platforms do."""

    def start_cost_timer(self, device):
        start = time.thread_time()
        return lambda: time.thread_time() - start


@kernel
def waits(i):
    return i, current_device().id


@waits.cuda
def _(i):
    time.sleep(0.02)  # a wait (for the GIL, say): the device's thread uses no CPU
    return i, current_device().id


class TimerFails(FakeAccelerator):
    def start_cost_timer(self, device):
        raise OSError("no clock")


class TimerFailsLater(FakeAccelerator):
    def start_cost_timer(self, device):
        def stop():
            raise OSError("the clock stopped")
        return stop


def run_waits(n_jobs, rounds=3):
    backend = DeviceBackend(placement="auto", cpu_backend="threading")
    with parallel_config(backend=backend):
        for _ in range(rounds):  # a worker thread's first sample of a kernel is held back
            out = Parallel(n_jobs=n_jobs)(delayed(waits)(i) for i in range(8))
            assert [i for i, _ in out] == list(range(8))
    backend.shutdown()  # saves the model


@pytest.mark.parametrize("n_jobs", [1, 2])  # in the caller's thread, or a worker's
def test_the_model_learns_what_a_platforms_cost_timer_counts(registry, no_gpu, n_jobs):
    devicejoblib.register(ChargesThreadTime())
    run_waits(n_jobs)
    on_xpu = saved_samples("xpu")
    assert on_xpu and max(on_xpu) < 5e-3, on_xpu  # by the wall clock: 20 ms a call


@pytest.mark.parametrize("platform", [TimerFails, TimerFailsLater], ids=["start", "stop"])
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_failing_cost_timer_costs_a_sample_not_a_result(registry, no_gpu, platform,
                                                          n_jobs):
    devicejoblib.register(platform())
    run_waits(n_jobs)  # the results are checked there
    assert saved_samples("xpu") == []


@pytest.mark.skipif(sys.platform == "win32", reason="the wall clock on Windows")
@pytest.mark.parametrize("platform", [p for p in devicejoblib.platforms()
                                      if p.kind == "cuda" and not p.simulated],
                         ids=lambda p: p.name)
def test_cuda_gpus_are_charged_their_threads_cpu_time_not_its_waits(platform):
    # a worker thread waiting for the GIL uses no CPU time; CUDA's default
    # synchronisation spins, so a wait for the GPU does (checked on a GPU in
    # test_placement.py)
    timer = platform.start_cost_timer(None)
    lock = threading.Lock()
    lock.acquire()
    threading.Timer(0.1, lock.release).start()
    lock.acquire()  # blocked on another thread, as on the GIL
    time.sleep(0.1)
    busy = time.thread_time() + 0.05
    while time.thread_time() < busy:  # work on the host, or spinning on the GPU
        pass
    assert 0.05 <= timer() < 0.15


def test_the_report_says_how_long_a_worker_waited_for_other_threads(registry, no_gpu):
    devicejoblib.register(ChargesThreadTime())
    backend = DeviceBackend(placement="xpu:0")
    out = Parallel(n_jobs=2, backend=backend)(delayed(waits)(i) for i in range(10))
    assert [i for i, _ in out] == list(range(10))
    row = backend.report()["xpu:0"]
    assert row["seconds"] >= 0.2 and row["working_seconds"] < 0.1 * row["seconds"], row
    assert "% of it not working (waits for the GIL, a core, I/O)" in backend.format_report()


def test_a_worker_timed_by_the_wall_clock_reports_no_wait(no_gpu):
    with devicejoblib.simulate_gpus(1):
        backend = DeviceBackend(placement="gpu")
        Parallel(n_jobs=2, backend=backend)(delayed(waits)(i) for i in range(5))
        row = backend.report()["cuda:0"]
    assert row["seconds"] > 0.1
    assert row["working_seconds"] == pytest.approx(row["seconds"], rel=0.05)
    assert "not working" not in backend.format_report()


def test_a_kernel_pinned_to_a_registered_kind_unpickles_where_that_kind_is_unknown(registry):
    devicejoblib.register(FakeAccelerator())
    data = pickle.dumps(where.on(["xpu:0", "cpu"]))
    del _platforms._PLATFORMS["fake"]  # as in a worker process that never ran register()
    restored = pickle.loads(data)
    assert restored.placement == ["xpu:0", "cpu"]
    assert restored(7)[:2] == (7, "cpu")  # a CPU worker runs it
