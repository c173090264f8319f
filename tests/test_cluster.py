"""The device backend on a Dask cluster: local clusters on 127.0.0.1, started and stopped
by each test, with CPU workers and "GPU" workers that declare a GPU resource and see one
simulated GPU each."""

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import devicejoblib
from device_kernels import (
    checked_sqrt,
    gpu_only,
    locate,
    plain,
    resident_probe,
    saxpy,
    slow_kernel,
)
from devicejoblib import DeviceBackend, Parallel, delayed, parallel_config

TESTS_DIR = Path(__file__).parent

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.skipif(not devicejoblib.USE_JOBLIB, reason="needs joblib")


@contextlib.contextmanager
def local_cluster(cpu_workers=1, gpu_workers=2, **kwargs):
    """A cluster of worker processes on 127.0.0.1 (see ``simulated_cluster``), and a
    client of it; the tests folder is on the workers' path."""
    path = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    with devicejoblib.simulated_cluster(cpu_workers, gpu_workers, env={"PYTHONPATH": path},
                                        silence_logs=logging.CRITICAL, **kwargs) as cluster, \
            distributed.Client(cluster) as client:
        client.wait_for_workers(cpu_workers + gpu_workers, timeout=60)
        yield cluster, client


def worker_pids(client, gpu):
    """The process ids of the GPU workers (or the others)."""
    info = client.scheduler_info()["workers"]
    pids = client.run(os.getpid)
    return {pids[a] for a, w in info.items() if bool(w.get("resources")) == gpu}


@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_calls_run_where_they_would_locally_with_results_in_order(return_as):
    calls = [delayed(locate)(i) if i % 3 else delayed(plain)(i) for i in range(60)]
    with local_cluster() as (_, client):
        gpu_pids, cpu_pids = worker_pids(client, True), worker_pids(client, False)
        with parallel_config(backend="device", client=client):
            out = list(Parallel(return_as=return_as)(calls))
        # a GPU worker's plugin owns a GPU pool: no joblib backend is built there
        built = client.run(lambda: "devicejoblib._backend" in __import__("sys").modules)
    if return_as == "generator_unordered":
        out.sort()
    assert not any(built.values()), built
    assert [r[0] for r in out] == list(range(60))
    for i, result in enumerate(out):
        if i % 3:  # a kernel with a GPU implementation: on a GPU worker's GPU
            assert result[1] == "cuda:0" and result[2] in gpu_pids
        else:  # a plain function: on some worker, not here
            assert result[1] in gpu_pids | cpu_pids
    assert all(pid != os.getpid() for *_, pid in (r[:3] for r in out))


def test_fused_results_equal_the_local_run_and_report_names_workers_and_devices():
    calls = [delayed(saxpy)(float(i), np.arange(4.0), np.ones(4)) for i in range(300)]
    local = Parallel(n_jobs=2, backend="threading")(calls)
    with local_cluster(cpu_workers=0) as (_, client):
        backend = DeviceBackend(client=client)
        out = Parallel(backend=backend)(calls)
        report = backend.report()
    for got, want in zip(out, local, strict=True):
        np.testing.assert_array_equal(got, want)
    assert sum(r["calls"] for r in report.values()) == 300
    for key, row in report.items():
        assert key == f"{row['worker']}/{row['device']}"
        assert row["worker"].startswith("tcp://127.0.0.1:") and row["device"] == "cuda:0"
    assert len({row["worker"] for row in report.values()}) == 2  # both GPU workers
    assert max(r["calls"] / r["batches"] for r in report.values()) > 1  # batched parts


def test_resident_state_is_made_once_per_gpu_worker_and_released_with_the_backend():
    def devicejoblib_threads():
        return sorted(t.name for t in threading.enumerate()
                      if t.name.startswith("devicejoblib-cuda"))

    with local_cluster(cpu_workers=0) as (_, client):
        backend = DeviceBackend(client=client)
        with parallel_config(backend=backend):
            first = Parallel()(delayed(resident_probe)(i) for i in range(40))
            second = Parallel()(delayed(resident_probe)(i) for i in range(40))
        states = {state for _, state, _ in first + second}
        assert len(states) == 2  # one per GPU worker, for both calls
        assert {pid for _, pid, _ in states} == worker_pids(client, True)
        assert any(client.run(devicejoblib_threads).values())
        backend.shutdown()
        deadline = time.monotonic() + 10
        while any(client.run(devicejoblib_threads).values()):
            assert time.monotonic() < deadline, "the workers' GPU threads outlived it"
            time.sleep(0.05)


def test_a_gpu_worker_killed_mid_run_loses_no_result_and_duplicates_none():
    with local_cluster(cpu_workers=0) as (_, client):
        victim = next(iter(worker_pids(client, True)))
        out, killed = [], False
        backend = DeviceBackend(client=client)
        for result in Parallel(backend=backend, batch_size=4, return_as="generator")(
                delayed(slow_kernel)(i) for i in range(200)):
            out.append(result)
            if len(out) == 20 and not killed:
                os.kill(victim, signal.SIGKILL)  # the nanny starts a new worker
                killed = True
    assert [tag for tag, *_ in out] == list(range(200))
    assert victim in {pid for _, _, pid, _ in out[:20]} | {victim}


def test_without_gpu_workers_kernels_fall_back_to_cpu_workers_else_fail(fresh_warnings):
    with local_cluster(cpu_workers=1, gpu_workers=0) as (_, client):
        with pytest.warns(RuntimeWarning, match="the Dask cluster has no GPU worker"):
            out = Parallel(backend=DeviceBackend(client=client))(
                delayed(locate)(i) for i in range(6))
        assert [(tag, device) for tag, device, *_ in out] == [(i, "cpu") for i in range(6)]
        with pytest.raises(devicejoblib.DeviceUnavailableError,
                           match=r"'gpu_only' cannot run on this Dask cluster.* 1 worker\(s\),"
                                 r" 0 with a 'GPU' resource"):
            Parallel(backend=DeviceBackend(client=client))(
                delayed(gpu_only)(i) for i in range(6))
        with pytest.raises(devicejoblib.DeviceUnavailableError, match="a placement on GPUs"):
            Parallel(backend=DeviceBackend(client=client, placement="gpu"))(
                delayed(locate)(i) for i in range(6))


def test_an_error_names_call_device_and_worker_with_the_users_frame():
    with local_cluster(cpu_workers=0, gpu_workers=1) as (_, client), \
            pytest.raises(ValueError, match=r"negative input -3\.0") as info:
        Parallel(backend=DeviceBackend(client=client))(
            delayed(checked_sqrt)(float(x)) for x in (4, 9, -3, 16))
    notes = " ".join(info.value.__notes__)
    assert "checked_sqrt(-3.0) on cuda:0 (simulated)" in notes
    assert "on Dask worker tcp://127.0.0.1:" in notes
    assert 'raise ValueError(f"negative input {x}")' in str(info.value.__cause__)


def test_an_error_in_a_cpu_part_names_its_call_and_worker():
    with local_cluster(cpu_workers=1, gpu_workers=0) as (_, client), \
            pytest.raises(ZeroDivisionError) as info:
        Parallel(backend=DeviceBackend(client=client))(
            delayed(divmod)(12, x) for x in (4, 3, 0, 2))
    notes = " ".join(info.value.__notes__)
    assert "raised by divmod(12, 0) on the CPU" in notes
    assert "on Dask worker tcp://127.0.0.1:" in notes


def test_losing_the_scheduler_is_a_clear_error_not_a_hang():
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}), \
            local_cluster(cpu_workers=0) as (cluster, client):
        backend = DeviceBackend(client=client)
        timer = threading.Timer(1.0, cluster.sync, (cluster.scheduler.close,))
        timer.start()
        start = time.monotonic()
        with pytest.raises(devicejoblib.ClusterLostError,
                           match="connection to the Dask scheduler"):
            Parallel(backend=backend, batch_size=4)(
                delayed(slow_kernel)(i) for i in range(2000))  # 20 s of work
        assert time.monotonic() - start < 10
        timer.join()


def test_gpu_parts_fail_once_the_cluster_has_no_gpu_worker_left():
    with local_cluster(cpu_workers=1, gpu_workers=1) as (cluster, client):
        backend = DeviceBackend(client=client, wait_for_workers_timeout=1)
        timer = threading.Timer(1.0, cluster.sync, (cluster.workers["gpu-0"].close,))
        timer.start()
        start = time.monotonic()
        with pytest.raises(devicejoblib.DeviceUnavailableError,
                           match=r"no GPU worker for 1 s \(the cluster has 1 worker"):
            Parallel(backend=backend, batch_size=4)(
                delayed(slow_kernel)(i) for i in range(2000))  # 40 s of work
        assert time.monotonic() - start < 15
        timer.join()


@pytest.mark.parametrize("make, error, match", [
    (lambda c: DeviceBackend(client="tcp://127.0.0.1:1"), TypeError,
     r"Invalid client='tcp://127.0.0.1:1': expected a distributed.Client or 'default'"),
    (lambda c: DeviceBackend(client=c, devices="cpu"), ValueError,
     r"Invalid devices='cpu' with client="),
    (lambda c: DeviceBackend(client=c, cpu_backend="threading"), ValueError,
     r"Invalid cpu_backend='threading' with client="),
    (lambda c: DeviceBackend(client=c, keep_on_device=True), ValueError,
     r"Invalid keep_on_device=True with client="),
    (lambda c: DeviceBackend(client=c, wait_for_workers_timeout="1s"), ValueError,
     r"Invalid wait_for_workers_timeout='1s': expected seconds"),
    (lambda c: DeviceBackend(client=c, retries=-1), ValueError,
     r"Invalid retries=-1: expected an integer >= 0"),
    (lambda c: DeviceBackend(retries=2), ValueError, r"Invalid retries=2 without client="),
    (lambda c: DeviceBackend(client=c, placement="tpu"), devicejoblib.InvalidDeviceError,
     r"Invalid device spec 'tpu'"),
    (lambda c: Parallel(backend="device", client=c)(delayed(abs)(1) for _ in range(2)),
     TypeError, r"parallel_config\(backend='device', client=...\)"),
])
def test_bad_cluster_arguments_are_refused(make, error, match):
    with local_cluster(cpu_workers=1, gpu_workers=0) as (_, client), \
            pytest.raises(error, match=match):
        make(client)


def test_the_default_client_is_used_when_asked_for():
    with local_cluster(cpu_workers=1, gpu_workers=0), \
            parallel_config(backend="device", client="default"):
        out = Parallel()(delayed(plain)(i) for i in range(4))
    assert [i for i, _ in out] == list(range(4))
    assert {pid for _, pid in out} != {os.getpid()}


def test_without_distributed_client_says_how_to_install_it(run_python):
    proc = run_python("""
        from devicejoblib import DeviceBackend
        try:
            DeviceBackend(client="default")
        except ImportError as exc:
            print(exc)
    """, block=("distributed",))
    assert "pip install 'devicejoblib[dask]'" in proc.stdout


def test_a_cluster_without_workers_is_waited_for_at_the_call_not_at_the_backend():
    with distributed.LocalCluster(n_workers=0, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0",
                                  silence_logs=logging.CRITICAL) as cluster, \
            distributed.Client(cluster) as client:
        start = time.monotonic()
        backend = DeviceBackend(client=client, wait_for_workers_timeout=0)
        assert time.monotonic() - start < 1  # making the backend waits for nothing
        with pytest.raises(TimeoutError, match="has no worker after 0 s"):
            Parallel(backend=backend)(delayed(plain)(i) for i in range(4))
        cluster.adapt(minimum=0, maximum=1)  # a worker is started when a task waits
        out = Parallel(backend=DeviceBackend(client=client, wait_for_workers_timeout=60))(
            delayed(plain)(i) for i in range(4))
    assert [i for i, _ in out] == list(range(4))


def test_mixed_batches_keep_growing_their_cpu_parts():
    calls = [delayed(locate)(i) if i % 2 else delayed(plain)(i) for i in range(2000)]
    with local_cluster(cpu_workers=1, gpu_workers=1) as (_, client):
        backend = DeviceBackend(client=client)
        out = Parallel(backend=backend)(calls)
        report = backend.report()
    assert [r[0] for r in out] == list(range(2000))
    cpu = [row for row in report.values() if row["device"] == "cpu"]
    calls_per_task = sum(r["calls"] for r in cpu) / sum(r["batches"] for r in cpu)
    assert calls_per_task > 4  # joblib's auto batching saw the CPU parts' rate


def test_a_worker_whose_gpu_is_lost_hands_its_parts_to_the_other_gpu_workers():
    with local_cluster(cpu_workers=0, gpu_workers=2, lose_gpu_after={0: 3}) as (_, client):
        backend = DeviceBackend(client=client, placement="gpu")
        first = Parallel(backend=backend, batch_size=4)(
            delayed(slow_kernel)(i) for i in range(120))
        second = Parallel(backend=backend, batch_size=4)(
            delayed(slow_kernel)(i) for i in range(40))
        report = backend.report()
    assert [tag for tag, *_ in first] == list(range(120))
    assert [tag for tag, *_ in second] == list(range(40))
    pids = {pid for _, _, pid, _ in first}
    assert len({pid for _, _, pid, _ in second}) == 1 < len(pids)  # the lost one: no more
    assert sum(row["calls"] for row in report.values()) == 160


def test_a_dask_workers_pool_runs_a_lost_gpus_calls_on_its_other_gpus():
    # what a worker with two GPUs does (simulated_cluster's workers see one each): the
    # pool its plugin owns, without the backend's routing
    from joblib.parallel import BatchedCalls

    from devicejoblib._assemble import worker_gpu_pool

    with devicejoblib.simulate_gpus(2, lose_after={0: 2}):
        pool = worker_gpu_pool()
        try:
            batch = BatchedCalls(iter([(locate, (i,), {}) for i in range(8)]), (None, 1),
                                 None, None)
            results, first = pool.run(batch)
        finally:
            pool.shutdown()
    assert first == "cuda:0" and "cuda:0" in pool.lost
    assert [r[0] for r in results] == list(range(8))
    assert [r[1] for r in results] == ["cuda:0"] * 2 + ["cuda:1"] * 6
