"""Simulated GPUs hold as much memory as they are given: the out-of-memory paths run
for real on CPUs."""

import gc

import numpy as np
import pytest

import device_kernels as dk
import devicejoblib
from devicejoblib import DeviceBackend, Parallel, delayed, simulate_gpus

pytestmark = pytest.mark.skipif(not devicejoblib.USE_JOBLIB, reason="needs joblib")

KIB = 1024


def floats(kib, value=1.0):
    return np.full(kib * KIB // 8, value)


def test_a_call_larger_than_the_gpu_runs_on_the_cpu_else_fails(fresh_warnings):
    with simulate_gpus(1, memory="1MiB"):
        # 600 KiB in and 600 KiB out do not fit 1 MiB together
        with pytest.warns(RuntimeWarning, match=r"doubled does not fit on cuda:0 "
                          r"\(simulated\) even alone \(614400 bytes"):
            out = Parallel(n_jobs=2, backend=DeviceBackend())(
                delayed(dk.doubled)(floats(600)) for _ in range(1))
        np.testing.assert_array_equal(out[0], floats(600, 2.0))
        with pytest.raises(MemoryError, match=r"out of memory on cuda:0 \(simulated\): "
                           r"600.0 KiB more with 600.0 KiB of 1.0 MiB in use") as info:
            Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(
                delayed(dk.doubled)(floats(600)) for _ in range(1))
    assert isinstance(info.value, devicejoblib.SimulatedOutOfMemory)
    assert any("doubled(array(" in note for note in info.value.__notes__)


def test_the_memory_cap_holds_from_the_first_fused_launch():
    dk.LAUNCHES.clear()
    with simulate_gpus(1, memory="1MiB"):
        # 96 KiB in and out per call: a launch of the first size (8 calls) needs 1.5 MiB
        out = Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(
            delayed(dk.doubled)(floats(96, i)) for i in range(64))
    assert [row[0] for row in out] == [2.0 * i for i in range(64)]
    sizes = [n for name, n in dk.LAUNCHES if name == "doubled"]
    assert max(sizes) > 1 and sum(sizes) <= 64  # no launch ran out of memory and again
    assert max(sizes) * 2 * 96 * KIB <= 1024 * KIB // 2


def test_results_kept_on_a_gpu_hold_its_memory_until_dropped():
    with simulate_gpus(1, memory="1MiB"):
        backend = DeviceBackend(placement="gpu", keep_on_device=True)
        kept = Parallel(n_jobs=2, backend=backend)(
            delayed(dk.doubled)(floats(300)) for _ in range(2))  # 600 KiB held
        assert all(isinstance(k, devicejoblib.SimulatedDeviceArray) for k in kept)
        with pytest.raises(MemoryError, match=r"900\.0 KiB of 1\.0 MiB in use"):
            Parallel(n_jobs=2, backend=backend)(
                delayed(dk.doubled)(floats(300)) for _ in range(1))
        del kept
        gc.collect()
        out = Parallel(n_jobs=2, backend=backend)(
            delayed(dk.doubled)(floats(300)) for _ in range(1))
        assert out[0][0] == 2.0


def test_n_jobs_1_runs_out_of_the_same_memory():
    with simulate_gpus(1, memory="1MiB"):
        with pytest.raises(MemoryError, match=r"out of memory on cuda:0 \(simulated\)"):
            Parallel(n_jobs=1, backend=DeviceBackend(placement="gpu"))(
                delayed(dk.doubled)(floats(600)) for _ in range(1))
        out = Parallel(n_jobs=1, backend=DeviceBackend(placement="gpu"))(
            delayed(dk.doubled)(floats(300)) for _ in range(2))
    assert [row[0] for row in out] == [2.0, 2.0]
