"""The reference workloads: CPU and GPU agree; resident state is made once per device."""

import os

import numpy as np
import pytest

import devicejoblib
from device_kernels import resident_probe
from devicejoblib import DeviceBackend, Parallel, delayed
from devicejoblib.kernels import bandit, logistic_map, mlp, numba_saxpy, saxpy, sum_of_squares

pytestmark = pytest.mark.skipif(not devicejoblib.USE_JOBLIB, reason="needs joblib")

rng = np.random.default_rng(7)
PROBS = [rng.uniform(0.1, 0.9, 4) for _ in range(6)]
X = [rng.random(257) for _ in range(12)]
BATCHES = [rng.standard_normal((16, 64)) for _ in range(12)]

#: workload -> (kernel, list of argument tuples, relative tolerance CPU vs GPU)
WORKLOADS = {
    "bandit-ucb1": (bandit.play, [(p, "ucb1", 300, s) for s, p in enumerate(PROBS)], 1e-12),
    "bandit-thompson": (bandit.play, [(p, "thompson", 300, s) for s, p in enumerate(PROBS)],
                        1e-12),
    "mlp": (mlp.infer, [(b,) for b in BATCHES], 1e-5),
    "saxpy": (saxpy, [(float(i), x, x[::-1].copy()) for i, x in enumerate(X)], 1e-15),
    "sum_of_squares": (sum_of_squares, [(x,) for x in X], 1e-12),
    "logistic_map": (logistic_map, [(0.1 + i / 50, 3.7, 500) for i in range(12)], 1e-12),
    "numba_saxpy": (numba_saxpy.saxpy, [(2.0, x, x) for x in X], 1e-15),
}


def run(k, args, placement):
    backend = DeviceBackend(placement=placement, cpu_backend="threading")
    out = Parallel(n_jobs=2, backend=backend, batch_size=4)(delayed(k)(*a) for a in args)
    backend.shutdown()
    return out


def _numba_cuda_cannot_compile():
    """Why this install's numba-cuda compiles no kernel, or None (seen: numba-cuda 0.2x
    with NumPy 2.5, which removed ``np.row_stack``)."""
    def fill(out):
        out[0] = 1.0

    try:
        from numba import cuda

        cuda.jit("void(float64[:])")(fill)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.mark.parametrize("workload", WORKLOADS)
def test_cpu_and_gpu_agree(gpus, workload):
    k, args, rtol = WORKLOADS[workload]
    if workload == "numba_saxpy" and not gpus[0].simulated:
        broken = _numba_cuda_cannot_compile()
        if broken:
            pytest.skip(f"numba-cuda compiles nothing on this install ({broken})")
    on_cpu, on_gpu = run(k, args, "cpu"), run(k, args, "gpu")
    assert len(on_cpu) == len(on_gpu) == len(args)
    for cpu, gpu in zip(on_cpu, on_gpu):
        np.testing.assert_allclose(np.asarray(gpu), np.asarray(cpu), rtol=rtol, atol=1e-12)


def test_bandit_regret_grows_and_ucb1_learns():
    out = run(bandit.play, [([0.1, 0.9], "ucb1", 2000, s) for s in range(4)], "cpu")
    for curve in out:
        assert curve.shape == (2000,) and np.all(np.diff(curve) >= 0)
        assert curve[-1] < 0.1 * 2000 * 0.8  # far below always pulling the bad arm


@pytest.mark.parametrize("bad, message", [
    (dict(policy="greedy"), "Invalid policy='greedy'"),
    (dict(horizon=0), "Invalid horizon=0"),
    (dict(probs=[0.5]), "expected >= 2 arms"),
])
def test_bandit_rejects_bad_input(bad, message):
    args = {"probs": [0.2, 0.4], "policy": "ucb1", "horizon": 10, "seed": 0, **bad}
    with pytest.raises(ValueError, match=message):
        bandit.play(**args)


def test_mlp_weights_are_made_once_per_device(gpus):
    mlp.SETUPS.clear()
    backend = DeviceBackend(placement="gpu")
    with Parallel(n_jobs=2, backend=backend, batch_size=2) as parallel:
        for _ in range(2):  # two Parallel calls on the same workers
            parallel(delayed(mlp.infer)(b) for b in BATCHES * 4)
    used = set(backend.report())
    assert used and dict.fromkeys(used, 1) == mlp.SETUPS
    # the end of the block released the weights: the next backend makes them again
    first = gpus[0].id
    run(mlp.infer, [(b,) for b in BATCHES], first)
    assert mlp.SETUPS[first] == 2


def test_calls_receive_their_own_devices_state(gpus):
    out = run(resident_probe, [(i,) for i in range(40)], "gpu")
    for _, (state_device, state_pid, _), (ran_on, pid, _) in out:
        assert state_device == ran_on and state_pid == pid == os.getpid()
    per_device = {}
    for _, state, (ran_on, _, _) in out:
        per_device.setdefault(ran_on, set()).add(state)
    assert all(len(states) == 1 for states in per_device.values())


def test_cpu_worker_processes_make_their_state_once_each():
    backend = DeviceBackend(placement="cpu")
    out = Parallel(n_jobs=2, backend=backend, batch_size=1)(
        delayed(resident_probe)(i) for i in range(30))
    states_by_pid = {}
    for _, (state_device, state_pid, token), (ran_on, pid, _) in out:
        assert state_device == ran_on == "cpu" and state_pid == pid != os.getpid()
        states_by_pid.setdefault(pid, set()).add(token)
    assert all(len(tokens) == 1 for tokens in states_by_pid.values())


def test_direct_call_uses_the_cpu_state():
    _, (state_device, pid, _), (ran_on, _, _) = resident_probe("direct")
    assert state_device == ran_on == "cpu" and pid == os.getpid()


def test_numba_cuda_kernel_under_the_simulator(run_python):
    pytest.importorskip("numba")
    out = run_python("""
        import json
        import numpy as np
        from devicejoblib import DeviceBackend, Parallel, delayed
        from devicejoblib.kernels import numba_saxpy
        x = np.arange(300.0)
        out = Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(
            delayed(numba_saxpy.saxpy)(float(a), x, x) for a in range(8))
        ok = all(np.array_equal(r, a * x + x) for a, r in enumerate(out))
        print(json.dumps({"ok": ok, "compiled": numba_saxpy._compiled.cache_info().currsize}))
    """, env={"NUMBA_ENABLE_CUDASIM": "1", "DEVICEJOBLIB_SIMULATE_GPUS": "2"}, json_out=True)
    assert out == {"ok": True, "compiled": 1}
