"""The "device" backend through joblib's public API, on simulated GPUs."""

import multiprocessing
import os
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import devicejoblib
from device_kernels import (
    cpu_only,
    fails_on,
    gpu_only,
    locate,
    locate_nogil,
    norms,
    plain_add,
    plain_where,
    scale,
)
from devicejoblib import (
    DeviceBackend,
    DeviceUnavailableError,
    Parallel,
    SimulatedDeviceArray,
    delayed,
    parallel_config,
)
from devicejoblib.arrays import home_of

pytestmark = pytest.mark.skipif(not devicejoblib.USE_JOBLIB, reason="needs joblib")


@pytest.fixture(autouse=True)
def on_gpus(gpus):
    """Every test here runs on simulated GPUs, and on real ones where there are some."""
    return gpus


def ids(devices):
    return {d.id for d in devices}


def test_registered_with_joblib():
    from joblib.parallel import BACKENDS

    assert "device" in BACKENDS


def test_every_kind_of_device_runs_calls_in_order(kind_devices):
    placement = [d.id for d in kind_devices]
    out = Parallel(n_jobs=2, backend=DeviceBackend(placement=placement))(
        delayed(locate)(i) for i in range(24))
    assert [tag for tag, *_ in out] == list(range(24))
    assert {device for _, device, _, _ in out} == set(placement)


def test_gpu_workers_see_their_own_device_and_load_spreads(gpus):
    out = Parallel(n_jobs=2, backend="device")(delayed(locate)(i) for i in range(40))
    assert [tag for tag, *_ in out] == list(range(40))
    for _, device, pid, thread in out:
        assert thread == f"devicejoblib-{device}" and pid == os.getpid()
    assert {device for _, device, _, _ in out} == ids(gpus)


def test_cpu_calls_run_in_loky_processes():
    out = Parallel(n_jobs=2, backend="device")(delayed(plain_where)(i) for i in range(8))
    assert {device for _, device, _, _ in out} == {"cpu"}
    assert os.getpid() not in {pid for _, _, pid, _ in out}


@pytest.mark.parametrize("how", [
    {"function": locate_nogil},
    {"function": plain_where, "prefer": "threads"},
    {"function": plain_where, "require": "sharedmem"},
    {"function": plain_where, "cpu_backend": "threading"},
])
def test_cpu_calls_run_in_threads_when_asked_or_nogil(how):
    function = how.pop("function")
    backend_args = {k: how.pop(k) for k in list(how) if k == "cpu_backend"}
    backend = DeviceBackend(placement="cpu", **backend_args)
    out = Parallel(n_jobs=2, backend=backend, **how)(delayed(function)(i) for i in range(6))
    assert {pid for _, _, pid, _ in out} == {os.getpid()}
    assert all(thread.startswith("devicejoblib-cpu") for *_, thread in out)


def test_explicit_placement_through_parallel(gpus):
    last = gpus[-1].id
    calls = [delayed(locate.on(last))(0), delayed(locate.on("cpu"))(1), delayed(locate)(2)]
    out = Parallel(n_jobs=2, backend="device")(calls)
    assert [device for _, device, _, _ in out] == [last, "cpu", out[2][1]]
    assert out[2][1] in ids(gpus)


def test_results_come_back_as_numpy_or_stay_on_device(gpus):
    x = np.arange(6.0).reshape(2, 3)
    out = Parallel(n_jobs=2, backend="device")(delayed(norms)(x) for _ in range(3))
    assert all(type(r) is np.ndarray for r in out)
    np.testing.assert_allclose(out[0], np.sqrt((x**2).sum(axis=1)))
    kept = Parallel(n_jobs=2, backend=DeviceBackend(keep_on_device=True))(
        delayed(scale)(x) for _ in range(4))
    homes = [home_of(r) for r in kept]
    assert set(homes) == ids(gpus)
    assert all(isinstance(r, SimulatedDeviceArray) for r in kept) == gpus[0].simulated
    # data affinity end to end: a kept array sends the next call to its device
    follow = Parallel(n_jobs=2, backend="device")(delayed(plain_where)(r) for r in kept)
    assert [device for _, device, _, _ in follow] == homes
    # plain functions' results come back to the host too
    summed = Parallel(n_jobs=2, backend="device")(delayed(plain_add)(r, 1) for r in kept)
    assert all(type(r) is np.ndarray for r in summed)


mixed_calls = st.lists(st.tuples(st.sampled_from(["gpu", "cpu", "cpu-only", "pinned"]),
                                 st.integers(-1000, 1000)), max_size=40)
FUNCTIONS = {"gpu": scale, "cpu": abs, "cpu-only": cpu_only, "pinned": scale.on("cuda:0")}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=mixed_calls, return_as=st.sampled_from(["list", "generator",
                                                      "generator_unordered"]),
       batch_size=st.sampled_from(["auto", 1, 3, 16]))
def test_results_equal_sequential_in_order(calls, return_as, batch_size):
    expected = [FUNCTIONS[kind](x) for kind, x in calls]
    backend = DeviceBackend(cpu_backend="threading")
    out = list(Parallel(n_jobs=2, backend=backend, return_as=return_as,
                        batch_size=batch_size)(delayed(FUNCTIONS[k])(x) for k, x in calls))
    if return_as == "generator_unordered":
        out, expected = sorted(out), sorted(expected)
    assert out == expected


@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_mixed_stream_with_loky(return_as):
    calls = [(scale, i) if i % 3 else (cpu_only, i) for i in range(30)]
    expected = [f(x) for f, x in calls]
    out = list(Parallel(n_jobs=2, backend="device", return_as=return_as)(
        delayed(f)(x) for f, x in calls))
    if return_as == "generator_unordered":
        out, expected = sorted(out), sorted(expected)
    assert out == expected


def test_existing_joblib_code_runs_unchanged():
    from math import sqrt

    with parallel_config(backend="device"):
        out = Parallel(n_jobs=2)(delayed(sqrt)(i**2) for i in range(10))
    assert out == Parallel(n_jobs=2, backend="loky")(delayed(sqrt)(i**2) for i in range(10))


def test_gpu_error_keeps_type_and_names_device_and_call():
    with pytest.raises(ValueError, match="bad input 3") as info:
        Parallel(n_jobs=2, backend="device")(delayed(fails_on)(i, 3) for i in range(6))
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "fails_on(3, 3)" in notes and "cuda:" in notes
    # the frames of the user's code, as loky keeps a worker's: in the cause
    cause = str(info.value.__cause__)
    assert "device_kernels.py" in cause and 'raise ValueError(f"bad input {x}")' in cause


def test_cpu_error_keeps_type():
    with pytest.raises(ValueError, match="bad input 2"):
        Parallel(n_jobs=2, backend=DeviceBackend(placement="cpu"))(
            delayed(fails_on)(i, 2) for i in range(6))


def slow_then_fail(failing, started):
    """A call that records itself, takes 10 ms, and raises for ``failing``."""

    def call(i):
        started.append(i)
        time.sleep(0.01)
        if i == failing:
            raise RuntimeError("stop")
        return i

    return call


def test_first_error_cancels_queued_gpu_work():
    started = []
    with pytest.raises(RuntimeError, match="stop"):
        Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"), batch_size=1,
                 pre_dispatch="all")(delayed(slow_then_fail(2, started))(i)
                                     for i in range(200))
    assert len(started) < 50


def test_nested_parallel_inside_a_gpu_call():
    def inner(n):
        return sum(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(n)))

    out = Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(
        delayed(inner)(n) for n in range(5))
    assert out == [sum(range(n)) for n in range(5)]


def test_threads_reused_within_parallel_config_and_joined_after(gpus):
    workers = {f"devicejoblib-{gpu.id}" for gpu in gpus}
    with parallel_config(backend="device"):
        first = Parallel(n_jobs=2)(delayed(locate)(i) for i in range(4))
        idents = {t.ident for t in threading.enumerate() if t.name in workers}
        Parallel(n_jobs=2)(delayed(locate)(i) for i in range(4))
        again = {t.ident for t in threading.enumerate() if t.name in workers}
    assert idents and idents == again
    assert {d for _, d, _, _ in first} == ids(gpus)
    assert not [t for t in threading.enumerate() if t.name.startswith("devicejoblib")]


def test_report_counts_every_call_per_device(capsys, gpus):
    backend = DeviceBackend()
    with Parallel(n_jobs=2, backend=backend, verbose=1) as parallel:
        parallel(delayed(scale)(i) for i in range(10))
        parallel(delayed(cpu_only)(i) for i in range(5))
    report = backend.report()
    assert sum(r["calls"] for r in report.values()) == 15
    assert report["cpu"]["calls"] == 5
    assert sum(report[d.id]["calls"] for d in gpus if d.id in report) == 10
    shown = " (simulated, no timing profile)" if gpus[0].simulated else ""
    assert f"cuda:0{shown}:" in capsys.readouterr().err
    backend.shutdown()


def test_effective_n_jobs_above_one_with_a_single_gpu(gpus):
    backend = DeviceBackend(devices=gpus[0])
    assert backend.effective_n_jobs(2) == 2
    out = Parallel(n_jobs=2, backend=backend)(delayed(locate)(i) for i in range(3))
    assert {d for _, d, _, _ in out} == {gpus[0].id}


def devicejoblib_threads():
    return [t for t in threading.enumerate() if t.name.startswith("devicejoblib")]


@pytest.mark.parametrize("n_jobs", [1, None])
def test_n_jobs_1_runs_in_the_callers_thread_and_still_routes_kernels(gpus, n_jobs):
    backend = DeviceBackend()
    assert backend.effective_n_jobs(n_jobs) == 1
    calls = [delayed(locate)(0), delayed(plain_where)(1), delayed(locate.on("cpu"))(2),
             delayed(locate.on(gpus[-1].id))(3)]
    out = Parallel(n_jobs=n_jobs, backend=backend)(calls)
    me = threading.current_thread().name
    assert [(tag, device, thread) for tag, device, _, thread in out] == [
        (0, gpus[0].id, me), (1, "cpu", me), (2, "cpu", me), (3, gpus[-1].id, me)]
    assert not devicejoblib_threads()  # no worker was started
    assert devicejoblib.current_device().id == "cpu"  # the caller's device, restored
    assert locate(4)[1] == "cpu"  # outside Parallel, kernels run their CPU implementation


def test_n_jobs_none_follows_a_parallel_config_that_sets_more(gpus):
    with parallel_config(backend="device", n_jobs=2):
        out = Parallel()(delayed(locate)(i) for i in range(4))
    assert {thread for *_, thread in out} <= {f"devicejoblib-{d.id}" for d in gpus}


def test_n_jobs_1_raises_a_gpu_calls_error_in_the_caller_with_its_frames(gpus):
    with pytest.raises(ValueError, match="bad input 2") as info:
        Parallel(n_jobs=1, backend=DeviceBackend(placement="gpu"))(
            delayed(fails_on)(i, 2) for i in range(4))
    import traceback

    frames = "".join(traceback.format_tb(info.value.__traceback__))
    assert 'raise ValueError(f"bad input {x}")' in frames  # the user's frame, here
    assert "fails_on(2, 2) on cuda:" in " ".join(info.value.__notes__)
    assert devicejoblib.current_device().id == "cpu"


def test_gpu_placement_without_gpu_is_an_error(no_gpu):
    with pytest.raises(DeviceUnavailableError, match="no cuda device"):
        DeviceBackend(placement="gpu")


@pytest.mark.parametrize("kwargs, message", [
    ({"cpu_backend": "dask"}, "Invalid cpu_backend='dask'"),
    ({"n_cpu_jobs": 0}, "Invalid n_cpu_jobs=0"),
    ({"devices": "tpu"}, "Invalid device spec 'tpu'"),
])
def test_bad_backend_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeviceBackend(**kwargs)


def test_kernel_called_directly_runs_on_cpu():
    assert locate(5)[1] == "cpu"
    assert cpu_only(1) == 2
    with pytest.raises(DeviceUnavailableError, match="only a GPU implementation"):
        gpu_only(1)


def test_kernels_pickle_by_reference():
    import pickle

    assert pickle.loads(pickle.dumps(scale)) is scale
    pinned = pickle.loads(pickle.dumps(scale.on("cuda:1")))
    assert pinned.placement == "cuda:1" and pinned(3) == 6


def test_a_worker_that_cannot_bind_fails_its_calls_instead_of_hanging(monkeypatch, gpus):
    from concurrent.futures import BrokenExecutor

    def broken(device):
        raise OSError("driver gone")

    monkeypatch.setattr(gpus[0].platform, "bind", broken)
    with pytest.raises(devicejoblib.BrokenDeviceError,
                       match=r"worker thread of cuda:\d.* cannot run calls.* driver gone") as info:
        Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(
            delayed(locate)(i) for i in range(4))
    assert isinstance(info.value, BrokenExecutor)
    assert "no device left" in str(info.value)  # every GPU was lost
    cause = info.value.__cause__  # the last worker's error, its binding error below
    assert isinstance(cause, devicejoblib.BrokenDeviceError)
    assert isinstance(cause.__cause__, OSError)


def test_large_cpu_arguments_leave_no_memmapped_files(run_python, tmp_path):
    # what is left in joblib's temporary folder once the call ended is what leaked (looked
    # at before the process exits: loky's resource tracker deletes it then)
    seen = run_python("""
        import json, os
        import numpy as np
        from devicejoblib import DeviceBackend, Parallel, delayed
        folder = os.environ["JOBLIB_TEMP_FOLDER"]
        arrays = [np.full(300_000, float(i)) for i in range(6)]  # above max_nbytes: memmapped
        with Parallel(n_jobs=2, backend=DeviceBackend(placement="cpu")) as parallel:
            assert parallel(delayed(np.sum)(a) for a in arrays) == [a.sum() for a in arrays]
            during = [name for _, _, names in os.walk(folder) for name in names]
        print(json.dumps({"during": during, "after": os.listdir(folder)}))
    """, env={"DEVICEJOBLIB_SIMULATE_GPUS": "2", "JOBLIB_TEMP_FOLDER": str(tmp_path)},
        json_out=True)
    assert len(seen["during"]) == 6  # each array memmapped there, while the call lasted
    assert seen["after"] == []


def test_a_routing_error_after_the_first_batches_is_raised_not_hung():
    calls = [delayed(locate)(i) for i in range(40)] + [delayed(locate.on("cuda:7"))(40)]
    with pytest.raises(devicejoblib.InvalidDeviceError, match="cuda:7"):
        # timeout: if the error were lost on the callback thread, fail instead of hanging
        Parallel(n_jobs=2, backend="device", batch_size=1, timeout=30)(calls)


def test_timeout_does_not_wait_for_the_running_gpu_call():
    finished = []

    def slow(i):
        time.sleep(4.0)
        finished.append(i)

    with pytest.raises(multiprocessing.TimeoutError):  # what joblib raises
        Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"), timeout=0.2)(
            delayed(slow)(i) for i in range(2))
    assert finished == []  # raised while the calls still ran: nothing waited for them


def test_cancelled_calls_are_not_reported_as_run():
    ran = []
    backend = DeviceBackend(placement="gpu")
    with pytest.raises(RuntimeError), Parallel(n_jobs=2, backend=backend, batch_size=1,
                                               pre_dispatch="all") as parallel:
        parallel(delayed(slow_then_fail(1, ran))(i) for i in range(100))
    backend.shutdown()  # wait for the calls that were running when the error came
    assert sum(r["calls"] for r in backend.report().values()) == len(ran) < 100


def test_a_one_off_backend_keeps_the_shared_backends_resident_state():
    from device_kernels import resident_probe

    with parallel_config(backend="device"):
        first = Parallel(n_jobs=2)(delayed(resident_probe)(i) for i in range(8))
        Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(
            delayed(resident_probe)(i) for i in range(8))  # ends: shuts its workers down
        again = Parallel(n_jobs=2)(delayed(resident_probe)(i) for i in range(8))
    tokens = {state for _, state, _ in first}
    assert tokens == {state for _, state, _ in again}


@pytest.mark.parametrize("function, placement", [
    pytest.param("blas_threads", "gpu", id="simulated-gpu-workers"),
    pytest.param("blas_threads_nogil", "cpu", id="cpu-thread-route"),
])
def test_host_threads_get_their_share_of_the_cores_and_limits_are_restored(
        function, placement, gpus):
    import device_kernels
    from device_kernels import _blas_threads

    if not gpus[0].simulated:
        pytest.skip("real GPUs compute on the device, not in host threads")
    before, cores = _blas_threads(), devicejoblib.cpu_count()
    share = max(cores // 2, 1)  # 2 simulated GPUs, or 2 CPU threads, at once
    if before is None or before == share:
        pytest.skip(f"BLAS threads already {before}: a limit of {share} would not show")
    backend = DeviceBackend(placement=placement)
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(getattr(device_kernels, function))(i) for i in range(8))
    assert {threads for _, threads in out} == {share}
    assert _blas_threads() == before


def test_dropping_resident_state_may_release_another_backend_meanwhile(gpus):
    from device_kernels import collecting_probe

    # A backend on one GPU, left in a reference cycle: only the collector frees it, and
    # its finalizer then lets go of its hold on that GPU.
    other = DeviceBackend(devices=gpus[0])
    other.cycle = other
    del other
    backend = DeviceBackend(placement="gpu")
    done = threading.Event()

    def run():  # the state's destruction, when this call ends, runs the collector
        Parallel(n_jobs=2, backend=backend)(delayed(collecting_probe)(i) for i in range(8))
        done.set()

    import gc

    gc.disable()  # the collector runs only when the state is dropped
    try:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(30)
    finally:
        gc.enable()
    assert done.is_set(), "releasing resident state deadlocked"


def test_host_thread_limits_last_only_as_long_as_a_call(gpus):
    from device_kernels import _blas_threads, blas_threads

    before = _blas_threads()
    if not gpus[0].simulated or before is None or before == max(devicejoblib.cpu_count()
                                                                // 2, 1):
        pytest.skip("no host-side limit to see here")
    with parallel_config(backend="device", placement="gpu"):
        inside = Parallel(n_jobs=2)(delayed(blas_threads)(i) for i in range(4))
        between = _blas_threads()  # the block's GPU threads live on, idle
    assert {threads for _, threads in inside} == {max(devicejoblib.cpu_count() // 2, 1)}
    assert between == before


def test_nested_parallel_in_gpu_calls_of_a_batch_split_over_gpus(gpus):
    if len(gpus) < 2:
        pytest.skip("needs two GPUs")

    @devicejoblib.kernel(portable=True)
    def nested(n):
        return sum(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(n)))

    done = threading.Event()

    def run():
        with parallel_config(backend="device"):
            for _ in range(10):  # one batch's parts on both GPUs, each calling Parallel
                calls = [delayed(nested.on(gpus[n % 2].id))(n) for n in range(16)]
                out = Parallel(n_jobs=2, batch_size=16)(calls)
                assert out == [sum(range(n)) for n in range(16)]
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert done.is_set(), "nested Parallel calls in split parts hung"


def test_calls_on_gpus_see_the_nested_config_joblib_gives_threads(gpus):
    from joblib.parallel import get_active_backend

    from device_kernels import nested_backend

    expected = Parallel(n_jobs=2, backend="threading")(
        delayed(nested_backend.__wrapped__)(i) for i in range(2))
    out = Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(
        delayed(nested_backend)(i) for i in range(6))
    assert set(out) == set(expected)
    assert type(get_active_backend()[0]).__name__ == "LokyBackend"  # the caller's: untouched


def test_a_call_left_running_by_a_timeout_does_not_hold_up_the_next_call(gpus):
    finished = []

    def slow(i):
        time.sleep(3.0)
        finished.append(i)

    with parallel_config(backend="device", placement="gpu"):
        with pytest.raises(multiprocessing.TimeoutError):
            Parallel(n_jobs=2, timeout=0.3)(delayed(slow)(i) for i in range(len(gpus)))
        out = Parallel(n_jobs=2)(delayed(locate)(i) for i in range(8))
        assert finished == []  # the next call ran while the slow ones still ran
    assert [tag for tag, *_ in out] == list(range(8))


def test_exit_is_not_held_up_by_a_call_that_never_returns(run_python):
    proc = run_python("""
        import time
        from multiprocessing import TimeoutError
        from devicejoblib import Parallel, delayed, parallel_config

        def forever(i):
            time.sleep(3600)

        with parallel_config(backend="device", placement="gpu"):
            try:
                Parallel(n_jobs=2, timeout=0.5)(delayed(forever)(i) for i in range(2))
            except TimeoutError:
                print("timed out")
    """, env={"DEVICEJOBLIB_SIMULATE_GPUS": "2"})  # run_python fails after 120 s
    assert "timed out" in proc.stdout


def test_no_gpu_call_starts_once_the_first_error_is_raised(gpus):
    started = []
    with parallel_config(backend="device", placement="gpu"):
        with pytest.raises(RuntimeError, match="stop"):
            # large batches: each GPU holds many calls when the second call fails
            Parallel(n_jobs=2, batch_size=20)(
                delayed(slow_then_fail(1, started))(i) for i in range(100))
        at_raise = len(started)
        time.sleep(0.3)  # the calls still running end; no other may start
    assert len(started) == at_raise
    # the batch holding the failure stopped there, and the other GPU's batch stopped too
    assert at_raise < 20


def test_ctrl_c_ends_the_program_while_gpu_calls_run(tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "interrupted.py"
    script.write_text(
        "import time\n"
        "from devicejoblib import Parallel, delayed, parallel_config\n"
        "def slow(i):\n"
        "    time.sleep(120)\n"
        "print('running', flush=True)\n"
        "with parallel_config(backend='device', placement='gpu'):\n"
        "    Parallel(n_jobs=2)(delayed(slow)(i) for i in range(4))\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DEVICEJOBLIB_SIMULATE_GPUS": "2"})
    try:
        assert proc.stdout.readline().strip() == "running"
        time.sleep(1.0)  # the GPU calls have started
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)  # the calls would take 120 s
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in err and proc.returncode != 0


def test_n_jobs_1_routes_only_the_calls_its_own_loop_makes(gpus):
    on_gpu = Parallel(n_jobs=1, backend=DeviceBackend(placement="gpu"),
                      return_as="generator")(delayed(locate)(i) for i in range(3))
    on_cpu = Parallel(n_jobs=1, backend=DeviceBackend(placement="cpu"),
                      return_as="generator")(delayed(locate)(i) for i in range(3))
    seen = []
    for first, second in zip(on_gpu, on_cpu):  # two calls interleaved in one thread
        seen.append((first[1], second[1], locate(9)[1]))  # and one direct call between
    assert seen == [(gpus[0].id, "cpu", "cpu")] * 3


def calls_a_kernel(i):
    return locate(i)[1]


def test_a_kernel_inside_a_plain_task_runs_as_it_would_in_a_worker(gpus):
    one = Parallel(n_jobs=1, backend=DeviceBackend())(delayed(calls_a_kernel)(i)
                                                       for i in range(2))
    two = Parallel(n_jobs=2, backend=DeviceBackend())(delayed(calls_a_kernel)(i)
                                                       for i in range(2))
    assert one == two == ["cpu", "cpu"]


def lose_gpu(monkeypatch, device):
    """Make binding a worker thread to ``device`` fail, as a lost GPU would."""
    bind = device.platform.bind

    def failing(bound):
        if bound.id == device.id:
            raise OSError(f"{bound.id} fell off the bus")
        return bind(bound)

    monkeypatch.setattr(device.platform, "bind", failing)


def test_calls_of_a_lost_gpu_run_on_the_others_once_each(monkeypatch, gpus):
    if len(gpus) < 2:
        pytest.skip("needs two GPUs")
    lose_gpu(monkeypatch, gpus[1])
    backend = DeviceBackend(placement="gpu")
    out = Parallel(n_jobs=2, backend=backend, batch_size=3)(
        delayed(locate)(i) for i in range(60))
    assert [tag for tag, *_ in out] == list(range(60))
    assert {device for _, device, _, _ in out} == {gpus[0].id}
    report = backend.report()
    assert "fell off the bus" in report[gpus[1].id]["lost"]
    assert report[gpus[0].id]["calls"] == 60  # none lost, none run twice


def test_a_call_pinned_to_a_lost_gpu_fails_naming_it(monkeypatch, gpus):
    lose_gpu(monkeypatch, gpus[-1])
    with pytest.raises(devicejoblib.BrokenDeviceError,
                       match=rf"no device left to run locate: .*{gpus[-1].id}.*fell off"):
        Parallel(n_jobs=2, backend=DeviceBackend())(
            delayed(locate.on(gpus[-1].id))(i) for i in range(4))


def test_a_gpu_lost_mid_run_hands_its_unfinished_calls_over_each_run_once(gpus):
    import collections

    if not gpus[0].simulated:
        pytest.skip("fault injection is a simulated GPU's")
    executed = []

    @devicejoblib.kernel(portable=True)
    def record(i):
        executed.append(i)
        # long enough that both GPUs get batches (with calls of no length, cuda:0 may
        # be free again each time a batch is dispatched, and take them all)
        time.sleep(0.002)
        return i, devicejoblib.current_device().id

    with devicejoblib.simulate_gpus(2, lose_after={1: 3}):
        backend = DeviceBackend(cpu_backend="threading")
        out = Parallel(n_jobs=2, backend=backend, batch_size=4)(
            delayed(record)(i) for i in range(80))
        report = backend.report()
    assert [i for i, _ in out] == list(range(80))
    assert collections.Counter(executed) == collections.Counter(range(80))  # once each
    assert sum(device == "cuda:1" for _, device in out) <= 3
    assert "lost after 3 launches" in report["cuda:1"]["lost"]


def test_with_every_gpu_lost_calls_go_where_placement_allows_else_fail(gpus):
    if not gpus[0].simulated:
        pytest.skip("fault injection is a simulated GPU's")
    with devicejoblib.simulate_gpus(2, lose_after={0: 2, 1: 2}):
        out = Parallel(n_jobs=2, backend=DeviceBackend(cpu_backend="threading"),
                       batch_size=2)(delayed(locate)(i) for i in range(30))
        assert [tag for tag, *_ in out] == list(range(30))
        assert out[-1][1] == "cpu"  # the CPU implementation took over
        with pytest.raises(devicejoblib.BrokenDeviceError, match="no device left"):
            Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"), batch_size=2)(
                delayed(locate)(i) for i in range(30))


def test_a_lost_gpu_does_not_keep_a_blocks_backend_and_threads_alive(gpus):
    if not gpus[0].simulated:
        pytest.skip("fault injection is a simulated GPU's")
    with devicejoblib.simulate_gpus(2, lose_after={1: 1}):
        with parallel_config(backend="device", placement="gpu"):
            out = Parallel(n_jobs=2, batch_size=2)(delayed(locate)(i) for i in range(20))
        assert [tag for tag, *_ in out] == list(range(20))
    # no_leaks checks, after the collector ran, that no devicejoblib thread is left


def test_a_call_that_does_not_fit_alone_runs_on_the_cpu_where_placement_allows(
        gpus, fresh_warnings):
    from device_kernels import too_big_for_gpu

    if not gpus[0].simulated:
        pytest.skip("the kernel's out-of-memory is simulated")
    arrays = [np.ones(10), np.ones(5000), np.ones(10)]
    with pytest.warns(RuntimeWarning, match=r"too_big_for_gpu does not fit on cuda:\d "
                      r"\(simulated\) even alone \(40000 bytes"):
        out = Parallel(n_jobs=2, backend=DeviceBackend())(
            delayed(too_big_for_gpu)(a) for a in arrays)
    assert out == [10.0, 5000.0, 10.0]
    with pytest.raises(MemoryError) as info:
        Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(
            delayed(too_big_for_gpu)(a) for a in arrays)
    assert "too_big_for_gpu(array(" in " ".join(info.value.__notes__)


def test_a_gpu_whose_call_outlives_a_timeout_is_busy_then_lost(gpus):
    release = threading.Event()

    def hang(i):
        release.wait(60)
        return i

    if len(gpus) < 2:
        pytest.skip("needs two GPUs: the second takes the calls while the first is busy")
    first, second = gpus[0].id, gpus[1].id
    try:
        backend = DeviceBackend(placement="gpu")
        with parallel_config(backend=backend):
            with pytest.raises(multiprocessing.TimeoutError):
                Parallel(n_jobs=2, timeout=0.5)([delayed(hang)(0)])  # on the first GPU
            # while its call runs, the first GPU is busy: calls go to the other
            out = Parallel(n_jobs=2)(delayed(locate)(i) for i in range(8))
            assert [tag for tag, *_ in out] == list(range(8))
            assert {device for _, device, *_ in out} == {second}
            time.sleep(0.6)  # as long again as the timeout: the call never returns
            pinned = locate.on(first)
            with pytest.raises(devicejoblib.BrokenDeviceError, match=f"{first}.*never "
                               "returned") as info:
                Parallel(n_jobs=2)(delayed(pinned)(i) for i in range(4))
            assert isinstance(info.value.__cause__.__cause__, TimeoutError)
            out = Parallel(n_jobs=2)(delayed(locate)(i) for i in range(8))
            assert {device for _, device, *_ in out} == {second}
        assert "never returned" in backend.report()[first]["lost"]
    finally:
        release.set()


def test_one_backend_serves_one_parallel_call_at_a_time(gpus):
    from device_kernels import slow_kernel

    backend = DeviceBackend()
    started, errors, results = threading.Event(), [], {}

    def first():
        with Parallel(n_jobs=2, backend=backend) as parallel:
            started.set()
            results["first"] = parallel(delayed(slow_kernel)(i) for i in range(10))

    thread = threading.Thread(target=first)
    thread.start()
    started.wait(10)
    try:  # a second call while the first holds the backend: a clear error, not a hang
        Parallel(n_jobs=2, backend=backend)(delayed(locate)(i) for i in range(4))
    except RuntimeError as exc:
        errors.append(exc)
    thread.join(30)
    assert not thread.is_alive()
    assert [tag for tag, *_ in results["first"]] == list(range(10))
    assert len(errors) == 1 and "two Parallel calls at once" in str(errors[0])
    for n_jobs in (2, 1, 2):  # one after the other, from any thread: served
        out = Parallel(n_jobs=n_jobs, backend=backend)(delayed(locate)(i) for i in range(4))
        assert [tag for tag, *_ in out] == list(range(4))
    backend.shutdown()


def test_the_input_generator_never_runs_bound_to_a_gpu(gpus):
    # joblib's callback, run on the GPU pool's callback thread, may take the next calls
    # from the caller's generator: that code must see the CPU, as in the caller
    seen = []

    def produce():
        for i in range(200):
            seen.append(devicejoblib.current_device().id)
            yield delayed(locate)(i)

    out = Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(produce())
    assert [tag for tag, *_ in out] == list(range(200))
    assert set(seen) == {"cpu"}


def test_a_managed_parallel_keeps_its_worker_processes_after_an_error():
    import operator

    with Parallel(n_jobs=2, backend=DeviceBackend(devices="cpu")) as parallel:
        with pytest.raises(ZeroDivisionError):
            parallel(delayed(operator.truediv)(1, i) for i in range(-2, 3))
        pids = set(parallel(delayed(os.getpid)() for _ in range(8)))
    assert pids and os.getpid() not in pids  # loky's processes again, not threads
