"""Learned placement (placement="auto") on simulated GPUs, with a kernel whose cost per
device is built in: 10 us per unit on the CPU; 3 ms a call on a GPU. Small calls must end
on the CPU, large ones on the GPUs.

The GPUs' costs are scripted, not timed (device_kernels.charge): what the model learns of
a GPU is exact under any load. The CPU's are its worker's wall time, which no platform
hook scripts: a large call sleeps 100 ms there, which load only lengthens (the CPU cannot
look faster than it is: 40 large calls queued on two GPUs, 63 ms, still finish first);
a small one returns at once, some 20-60 us of the worker's own time, 50x or more under
a GPU's 3 ms. (It used to sleep 0.1 ms, which the CPU pool timed at 0.2 ms, and under
load at 3.5 ms a call, the GIL taken back after the sleep while GPU threads ran Python:
slower than a GPU's 2 ms, so small calls went to the GPUs.)"""

import collections
import json
import os
import re
import subprocess
import sys
import time
import warnings

import pytest

import devicejoblib
from conftest import saved_samples
from device_kernels import locate, modelled, script_gpu_costs, set_up_per_thread
from devicejoblib import DeviceBackend, Parallel, delayed, parallel_config, simulate_gpus
from devicejoblib._cli import main as cli
from devicejoblib.policy.placement import KEEP

pytestmark = pytest.mark.skipif(not devicejoblib.USE_JOBLIB, reason="needs joblib")

SMALL, LARGE = 10, 10_000  # CPU ~0 (no sleep) / GPU 3 ms; CPU 100 ms / GPU 3 ms


@pytest.fixture(autouse=True)
def scripted_gpu_costs(monkeypatch):
    """Simulated GPUs charge the model what their calls charge, not a clock's reading (a
    sleep's wall time, which load stretches)."""
    script_gpu_costs(monkeypatch.setattr)


def run_round(backend, sizes=(SMALL, LARGE), repeat=40):
    """Kinds of device each size ran on: {(size, "cpu" or "cuda"): calls}."""
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(modelled)(n) for n in list(sizes) * repeat)
    assert [n for n, _ in out] == list(sizes) * repeat
    return collections.Counter((n, device.split(":")[0]) for n, device in out)


def calibrate(backend, rounds=10):
    """Run rounds until one sends no call to a device only to measure it."""
    for _ in range(rounds):
        before = calibrating(backend)
        run_round(backend)
        if calibrating(backend) == before:
            return
    raise AssertionError(f"still calibrating after {rounds} rounds")


def calibrating(backend):
    return sum(row.get("calibrating_calls", 0) for row in backend.report().values())


def test_auto_sends_small_calls_to_the_cpu_and_large_ones_to_gpus(two_gpus):
    backend = DeviceBackend(placement="auto", cpu_backend="threading")
    first = run_round(backend)
    assert first[(SMALL, "cuda")] > 0 and first[(LARGE, "cpu")] > 0  # calibration
    calibrate(backend)
    explored = calibrating(backend)
    placed = run_round(backend)
    # each size where it is fastest, but a device passed over gets one call in
    # REMEASURE_EVERY (of its kernel and size) to measure it again: each GPU a small
    # call at most in a round of 40, the CPU a large one
    assert placed[(SMALL, "cpu")] >= 38 and placed[(SMALL, "cuda")] <= 2, placed
    assert placed[(LARGE, "cuda")] >= 39 and placed[(LARGE, "cpu")] <= 1, placed
    assert calibrating(backend) == explored  # calibrated: no more calls sent to measure


def test_unseen_sizes_are_predicted_from_neighbours_not_explored(two_gpus):
    backend = DeviceBackend(placement="auto", cpu_backend="threading")
    calibrate(backend)
    explored = calibrating(backend)
    # sizes never seen: the regression on size predicts them on each device (CPU ~0.1 /
    # GPU 3 ms; CPU ~20 / GPU 3 ms). Five calls of each: however joblib batches them,
    # no queue can make the other device expected to finish first (with 20, a GPU
    # holding 7 calls of 3000 made the CPU the earlier one for an eighth)
    assert run_round(backend, sizes=(20, 3000), repeat=5) == {(20, "cpu"): 5,
                                                              (3000, "cuda"): 5}
    assert calibrating(backend) == explored


def test_explain_says_what_was_predicted_and_why_calls_went_where(two_gpus):
    backend = DeviceBackend(placement="auto", cpu_backend="threading")
    assert "no call was placed 'auto'" in backend.explain()
    calibrate(backend)
    text = backend.explain()
    assert "device_kernels.modelled, size ~" in text
    assert "cuda:simulated GPU:" in text and "us/call (measured, " in text
    assert "(calibrating)" in text and "(expected to finish first)" in text


def test_the_verbose_report_explains_the_calls_placed_in_that_call(two_gpus, capfd):
    backend = DeviceBackend(placement="auto", cpu_backend="threading")
    with parallel_config(backend=backend, verbose=10):
        Parallel(n_jobs=2)(delayed(modelled)(LARGE) for _ in range(6))
        first = capfd.readouterr()
        Parallel(n_jobs=2)(delayed(modelled)(SMALL) for _ in range(6))
        second = capfd.readouterr()
    text = first.out + first.err
    assert "placed 'auto' in this call:" in text
    assert "device_kernels.modelled, size ~90.5 KiB:" in text and "calls (" in text
    later = second.out + second.err
    assert "device_kernels.modelled, size ~90 B:" in later
    assert "size ~90.5 KiB" not in later  # this call placed none of those
    # the dispatch report above it counts this call's calls too, not the backend's
    counts = re.findall(r"\]: \S+(?: \([^)]*\))?: (\d+) calls in \d+ batches", later)
    assert sum(map(int, counts)) == 6, later


def test_a_device_not_yet_measured_gets_calls_to_measure_it_only(two_gpus):
    # the GPUs measured first; then, while the CPU's first parts of large calls run, its
    # time is unknown: taken as free, it drew the other large calls too (100 ms each
    # there, 3 ms on a GPU)
    run_round(DeviceBackend(devices="cuda", placement="auto"), sizes=(LARGE,), repeat=20)
    backend = DeviceBackend(placement="auto", cpu_backend="threading")
    run_round(backend, sizes=(LARGE,), repeat=30)
    cpu = backend.report()["cpu-threads"]
    assert cpu["auto_calls"] == cpu["calibrating_calls"] > 0, backend.explain()


def test_explain_says_when_a_device_got_calls_as_the_only_one_measured(two_gpus):
    run_round(DeviceBackend(devices="cuda:0", placement="auto"), sizes=(LARGE,), repeat=20)
    backend = DeviceBackend(devices=["cpu", "cuda:0"], placement="auto",
                            cpu_backend="threading")
    run_round(backend, sizes=(LARGE,), repeat=10)
    assert re.search(r"-> cuda:0: \d+ calls? \(the only one measured yet\)",
                     backend.explain()), backend.explain()


def test_only_kernels_placed_auto_are_placed_by_the_model(two_gpus):
    backend = DeviceBackend(cpu_backend="threading")  # capability for the others
    calls = [delayed(modelled.on("auto"))(SMALL), delayed(locate)(0)] * 10
    for _ in range(10):  # until calibrated
        before = calibrating(backend)
        placer = backend.router.placer
        decided = placer.decisions_now() if placer is not None else collections.Counter()
        out = Parallel(n_jobs=2, backend=backend)(calls)
        if calibrating(backend) == before:
            break
    # on the CPU, where they finish first — but for a call measuring a GPU again
    again = sum(n for (*_, why), n in (backend.router.placer.decisions_now() - decided)
                .items() if why.startswith("measured again"))
    off = sum(device.split(":")[0] != "cpu" for _, device in out[0::2])
    assert off <= again, backend.explain()
    assert {device.split(":")[0] for _, device, *_ in out[1::2]} == {"cuda"}  # capability


def test_explicit_placement_keeps_its_precedence_over_auto(two_gpus):
    backend = DeviceBackend(placement="auto", cpu_backend="threading")
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(modelled.on("cuda:1"))(SMALL) for _ in range(10))
    assert {device for _, device in out} == {"cuda:1"}


def gpu_samples(kernel_name):
    """The seconds per call the saved model file holds for ``kernel_name`` on GPUs."""
    return saved_samples("cuda", kernel_name)


def test_a_worker_threads_first_call_of_a_kernel_is_setup_not_a_sample():
    # each backend's GPU worker thread is fresh, and its first call pays 0.3 s of setup;
    # taken as samples (all but the very first), those made the GPU look 1000x slower
    with simulate_gpus(1):
        for _ in range(3):
            backend = DeviceBackend(placement="auto", cpu_backend="threading")
            with parallel_config(backend=backend):  # (its threads serve every call)
                for _ in range(8):
                    out = Parallel(n_jobs=2)(delayed(set_up_per_thread)(7) for _ in range(4))
            backend.shutdown()
        assert [i for i, _ in out] == [7] * 4
    samples = gpu_samples("device_kernels.set_up_per_thread")
    assert len(samples) >= 3 and max(samples) < 0.05, samples


def test_a_thread_that_ran_a_kernel_once_paid_its_setup_for_those_calls(two_gpus):
    # backends of one call each: each GPU thread runs one group, so its setup is what the
    # GPU costs there; the model learns that and stops calibrating
    for _ in range(12):
        backend = DeviceBackend(placement="auto", cpu_backend="threading")
        Parallel(n_jobs=2, backend=backend)(delayed(set_up_per_thread)(7) for _ in range(2))
        backend.shutdown()
    assert len(gpu_samples("device_kernels.set_up_per_thread")) >= 3
    before = calibrating(backend)
    Parallel(n_jobs=2, backend=backend)(delayed(set_up_per_thread)(7) for _ in range(2))
    assert calibrating(backend) == before, backend.explain()


def test_what_a_calls_ending_threads_release_is_saved_with_it(two_gpus):
    for _ in range(12):
        backend = DeviceBackend(placement="auto", cpu_backend="threading")
        Parallel(n_jobs=2, backend=backend)(delayed(set_up_per_thread)(7) for _ in range(2))
        known = re.search(r"cuda:simulated GPU: .*\b(\d+) samples\)", backend.explain())
        saved = len(gpu_samples("device_kernels.set_up_per_thread"))
        assert saved == (int(known.group(1)) if known else 0), backend.explain()
    assert saved > 0


PROCESS = """
import collections, json
from devicejoblib import DeviceBackend, Parallel, delayed, parallel_config, simulate_gpus
from device_kernels import modelled, script_gpu_costs
script_gpu_costs()  # as the tests in-process: GPU costs charged, not timed
with simulate_gpus(2):
    backend = DeviceBackend(placement="auto", cpu_backend="threading")
    count = lambda: sum(r.get("calibrating_calls", 0) for r in backend.report().values())
    for _ in range({rounds}):  # until a round sends no call only to measure a device
        before = count()
        out = Parallel(n_jobs=2, backend=backend)(
            delayed(modelled)(n) for n in [10, 10000] * 40)
        if count() == before:
            break
    print(json.dumps({"calibrating": count(),
                      "placed": sorted({(n, d.split(":")[0]) for n, d in out})}))
"""


def test_a_real_gpus_sample_counts_its_work_and_leaves_out_its_waits(gpus):
    # CUDA platforms charge the model their thread's CPU time: a wait for the GIL (here
    # a sleep) uses none, and CUDA's default synchronisation spins while the GPU works
    device = gpus[0]
    if device.simulated or device.provider != "cupy":
        pytest.skip("a real GPU's work, launched through CuPy")
    platform = device.platform
    with platform.bound(device) as sync:
        xp = platform.array_module()
        a = xp.ones((4096, 4096), dtype=xp.float32)
        sync()
        timer, start = platform.start_cost_timer(device), time.perf_counter()
        for _ in range(100):  # about 0.2 s of the GPU's work
            a = a @ a / 4096
        sync()
        on_gpu = time.perf_counter() - start
        time.sleep(0.3)
        cost = timer()
    assert float(a[0, 0]) == 1.0
    assert 0.5 * on_gpu < cost < on_gpu + 0.1, (cost, on_gpu)


def test_a_second_process_reuses_the_model_without_exploring(run_python):
    first = run_python(PROCESS.replace("{rounds}", "10"), json_out=True)
    assert first["calibrating"] > 0
    second = run_python(PROCESS.replace("{rounds}", "1"), json_out=True)
    assert second["calibrating"] == 0
    assert second["placed"] == [[10, "cpu"], [10000, "cuda"]]


def test_a_corrupt_model_file_is_a_warning_and_a_fresh_start(two_gpus, fresh_warnings):
    path = devicejoblib.policy.model_store.model_path()
    path.write_text("{ not json")
    with pytest.warns(RuntimeWarning, match=r"placement model file .* is unreadable"):
        counts = run_round(DeviceBackend(placement="auto", cpu_backend="threading"))
    assert sum(counts.values()) == 80
    assert json.loads(path.read_text())["format"] == "devicejoblib placement model"


def test_a_model_file_of_another_version_is_a_fresh_start(two_gpus, fresh_warnings):
    # version 1 timed real GPUs by the wall clock: its samples are not to be trusted
    path = devicejoblib.policy.model_store.model_path()
    path.write_text(json.dumps({"format": "devicejoblib placement model", "version": 1,
                                "hosts": {}}))
    with pytest.warns(RuntimeWarning, match="of another format or version"):
        run_round(DeviceBackend(placement="auto", cpu_backend="threading"), repeat=5)
    assert json.loads(path.read_text())["version"] == 2


WRITER = """
import sys
import time
import warnings
from pathlib import Path
from devicejoblib.policy import model_store as _model_store
model = _model_store.get_model()
for i in range(30):
    model.record(f"writer{sys.argv[1]}", "cpu:test", i % 4, 0.001 * i)
    _model_store.save(model)
"""


def test_concurrent_writers_do_not_corrupt_the_model(tmp_path):
    env = {**os.environ, "DEVICEJOBLIB_MODEL_PATH": str(tmp_path / "shared.json")}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(i)], env=env)
               for i in range(4)]
    assert [w.wait(timeout=120) for w in writers] == [0] * 4
    data = json.loads((tmp_path / "shared.json").read_text())
    (section,) = data["hosts"].values()
    kernels = {key.split("\x1f")[0] for key in section["history"]}
    assert kernels == {f"writer{i}" for i in range(4)}  # nobody's updates were lost


def test_the_model_can_be_turned_off(two_gpus, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DEVICEJOBLIB_MODEL_PATH", "off")
    for _ in range(2):
        run_round(DeviceBackend(placement="auto", cpu_backend="threading"), repeat=5)
    assert not list(tmp_path.iterdir())
    assert cli(["model", "path"]) == 0
    assert "off" in capsys.readouterr().out


def test_model_command_shows_resets_and_locates_the_model(two_gpus, capsys):
    calibrate(DeviceBackend(placement="auto", cpu_backend="threading"))
    path = devicejoblib.policy.model_store.model_path()
    assert cli(["model", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    assert cli(["model", "show"]) == 0
    shown = capsys.readouterr().out
    assert f"placement model {path}" in shown
    assert "device_kernels.modelled on cuda:simulated GPU, size ~" in shown
    assert cli(["model", "show", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["histories"]
    assert {row["device"] for row in rows} >= {"cuda:simulated GPU"}
    assert cli(["model", "reset"]) == 0
    assert not path.exists()
    assert cli(["model", "show"]) == 0
    assert "nothing learnt yet" in capsys.readouterr().out


FUSING = """
import json
from devicejoblib import DeviceBackend, Parallel, delayed, parallel_config, simulate_gpus
import device_kernels as dk
with simulate_gpus(1, launch_latency=2e-3):
    backend = DeviceBackend(placement="gpu", max_batch_size={cap})
    Parallel(n_jobs=2, backend=backend)(
        delayed(dk.logistic)(0.3, 3.2, steps=5) for _ in range({calls}))
    row = backend.report()["cuda:0"]
print(json.dumps([row["batch_size"], row["batch_policy"],
                  sorted(int(n) for n in row["per_call_seconds"])]))  # sizes measured
"""


def test_a_new_process_fuses_at_the_launch_size_learnt_before(run_python):
    size, policy, _ = run_python(FUSING.format(calls=4000, cap=128), json_out=True)
    assert (size, policy) == (128, "settled")  # grown to max_batch_size
    again, _, measured = run_python(FUSING.format(calls=1000, cap=128), json_out=True)
    assert again == size and measured == [size]  # from the first full launch


def test_a_learnt_launch_size_that_a_cap_held_is_outgrown(run_python):
    # a first process held at 16 calls by its max_batch_size: a second one, without
    # that cap, starts there but does not stay (taken as settled, it stayed for good)
    size, policy, _ = run_python(FUSING.format(calls=400, cap=16), json_out=True)
    assert (size, policy) == (16, "settled")
    again, _, measured = run_python(FUSING.format(calls=4000, cap=None), json_out=True)
    assert measured[0] == 16 and again >= 64, (again, measured)


def test_a_process_held_by_a_cap_does_not_lower_the_learnt_launch_size(run_python):
    size, _, _ = run_python(FUSING.format(calls=4000, cap=128), json_out=True)
    held, policy, _ = run_python(FUSING.format(calls=400, cap=16), json_out=True)
    assert (size, held, policy) == (128, 16, "settled")
    _, _, measured = run_python(FUSING.format(calls=1000, cap=128), json_out=True)
    assert measured == [128]  # started from 128 again, not from 16


def test_auto_with_a_cluster_is_refused():
    with pytest.raises(ValueError, match="Invalid placement='auto' with client="):
        DeviceBackend(client="default", placement="auto")


def test_a_kernel_no_allowed_device_runs_natively_goes_where_capability_sends_it(two_gpus):
    from device_kernels import cpu_only

    backend = DeviceBackend(devices=["cuda:0", "cuda:1"], placement="auto",
                            cpu_backend="threading")
    assert Parallel(n_jobs=2, backend=backend)([delayed(cpu_only)(1)] * 3) == [2, 2, 2]


def test_what_auto_queued_is_settled_after_a_lost_gpu(tmp_path):
    with simulate_gpus(2, lose_after={1: 3}):
        for _ in range(2):  # the second with a calibrated model: calls placed by it
            backend = DeviceBackend(placement="auto", cpu_backend="threading")
            out = Parallel(n_jobs=2, backend=backend, batch_size=8)(
                delayed(modelled)(n) for n in [LARGE, SMALL] * 40)
            assert [n for n, _ in out] == [LARGE, SMALL] * 40
            placer = backend.router.placer
            assert max(placer.pending.values()) < 1e-9 and not placer._exploring


class OddArray:
    """An argument that looks like an array but knows no size (a lazy array's NaN)."""

    shape = (3,)
    nbytes = float("nan")


def test_arguments_of_unknown_size_neither_fail_auto_nor_hang_the_trace(two_gpus, tmp_path):
    path = tmp_path / "run.json"
    backend = DeviceBackend(placement="auto", cpu_backend="threading", trace=str(path))
    out = Parallel(n_jobs=2, backend=backend, timeout=60)(
        delayed(modelled.on("auto"))(5) for _ in range(4))
    assert [n for n, _ in out] == [5] * 4
    out = Parallel(n_jobs=2, backend=backend, timeout=60)(
        delayed(lambda odd: 1)(OddArray()) for _ in range(4))
    assert out == [1] * 4
    assert "NaN" not in path.read_text()


def test_an_unwritable_trace_is_a_warning_and_the_results_arrive(two_gpus, tmp_path,
                                                               fresh_warnings):
    (tmp_path / "sub").mkdir()
    backend = DeviceBackend(trace=str(tmp_path / "sub" / "run.json"), cpu_backend="threading")
    (tmp_path / "sub").rmdir()
    (tmp_path / "sub").write_text("")  # the trace's folder is a file by the time it writes
    with pytest.warns(RuntimeWarning, match="the trace could not be written"):
        out = Parallel(n_jobs=2, backend=backend)(delayed(locate)(i) for i in range(4))
    assert [tag for tag, *_ in out] == list(range(4))
    assert not list(tmp_path.glob("*.tmp"))


def test_a_model_file_with_a_malformed_host_section_is_rewritten(two_gpus, fresh_warnings):
    import platform

    path = devicejoblib.policy.model_store.model_path()
    path.write_text(json.dumps({"format": "devicejoblib placement model", "version": 2,
                                "hosts": {platform.node(): {"history": []}}}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "cannot read": a fresh start
        run_round(DeviceBackend(placement="auto", cpu_backend="threading"), repeat=5)
    section = json.loads(path.read_text())["hosts"][platform.node()]
    assert section["history"]  # what this process learnt


def test_model_reset_of_a_folder_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DEVICEJOBLIB_MODEL_PATH", str(tmp_path))
    assert cli(["model", "reset"]) == 2
    assert "cannot delete the placement model" in capsys.readouterr().err


def test_n_jobs_1_places_auto_kernels_by_the_model_in_the_caller(two_gpus):
    backend = DeviceBackend(placement="auto", cpu_backend="threading")
    calibrate(backend)
    placer = backend.router.placer
    before = placer.decisions_now()
    out = Parallel(n_jobs=1, backend=backend)(
        delayed(modelled)(n) for n in [SMALL, LARGE] * 3)
    placed = [(n, device.split(":")[0]) for n, device in out]
    # each where it is expected to finish first, but for a call that measures a device
    # passed over for REMEASURE_EVERY calls again
    again = sum(n for (*_, why), n in (placer.decisions_now() - before).items()
                if why.startswith("measured again"))
    off = sum(got != want for got, want in zip(placed, [(SMALL, "cpu"), (LARGE, "cuda")] * 3))
    assert off <= again, (placed, placer.decisions_now() - before)
    assert max(placer.pending.values()) < 1e-9


def test_a_device_ruled_out_by_its_samples_is_measured_again_now_and_then(two_gpus):
    from devicejoblib.policy.placement import (
        REMEASURE_EVERY,
        REMEASURING,
        AutoPlacer,
        CostModel,
        device_model,
        footprint,
        kernel_key,
    )

    cpu, gpu = two_gpus[0], two_gpus[1]
    model = CostModel()
    kernel, bucket = kernel_key(modelled), footprint((100,), {})
    for _ in range(8):  # calibrated: the GPU fast, the CPU slow by its first samples
        model.record(kernel, device_model(gpu), bucket, 1e-3)
        model.record(kernel, device_model(cpu), bucket, 1.0)
    placer = AutoPlacer(model, slots=lambda device: 1)

    def place(n_batches):
        sent = collections.Counter()
        for _ in range(n_batches):  # a call a batch, each done before the next
            chosen, ledger = placer.place([(modelled, (100,), {})], lambda k: (cpu, gpu))
            for positions, device, _ in chosen:
                sent[device.id] += len(positions)
            for (device_id, *_), entry in ledger.items():
                placer.settle(device_id, entry)
        return sent

    sent = place(10 * REMEASURE_EVERY)
    # measured again once in every REMEASURE_EVERY calls: a bounded share, never zero
    assert sent["cpu"] == 10 - 1 or sent["cpu"] == 10, sent
    assert placer.decisions[(kernel, bucket, "cpu", REMEASURING)] == sent["cpu"]
    # what those calls measure moves the verdict: the CPU is fast now
    for _ in range(KEEP // 2 + 1):
        model.record(kernel, device_model(cpu), bucket, 1e-4)
    assert place(100)["cpu"] >= 50
