"""Fused launches through Parallel: results identical to unfused execution, in order."""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import device_kernels as dk
import devicejoblib
from devicejoblib import DeviceBackend, Parallel, delayed, simulate_gpus

pytestmark = pytest.mark.skipif(not devicejoblib.USE_JOBLIB, reason="needs joblib")


@pytest.fixture(autouse=True)
def on_gpus(gpus):
    dk.LAUNCHES.clear()
    dk.STEPS_SEEN.clear()
    return gpus


def run(calls, **parallel_kwargs):
    backend = parallel_kwargs.pop("backend", None) or DeviceBackend(placement="gpu")
    return Parallel(n_jobs=2, backend=backend, **parallel_kwargs)(calls)


def launches(name):
    return [n for form, n in dk.LAUNCHES if form == name]


def test_many_small_calls_fuse_into_few_launches():
    calls = [delayed(dk.logistic)(0.1 + i / 1e4, 3.7) for i in range(400)]
    out = run(calls)
    assert out == [dk.logistic(0.1 + i / 1e4, 3.7) for i in range(400)]
    # joblib's last batches can hold a single call, which runs unfused
    assert 350 < sum(launches("logistic")) <= 400
    assert len(launches("logistic")) < 100


def test_unequal_same_parameters_are_not_fused():
    calls = [delayed(dk.logistic)(0.2 + i / 1e4, 3.5, steps=s)
             for i, s in enumerate((10, 20) * 300)]
    out = run(calls, batch_size=30)
    assert out == [dk.logistic(0.2 + i / 1e4, 3.5, steps=s)
                   for i, s in enumerate((10, 20) * 300)]
    # each launch received one plain `steps` value: calls with 10 and 20 never mixed
    assert dk.STEPS_SEEN and all(type(s) is int for s in dk.STEPS_SEEN)
    assert set(dk.STEPS_SEEN) == {10, 20}


def test_tuple_results_split_per_call(gpus):
    xs = [np.arange(5.0) + i for i in range(30)]
    out = run([delayed(dk.moments)(x) for x in xs])
    assert [tuple(map(float, r)) for r in out] == [
        (float(x.sum()), float((x * x).sum())) for x in xs]
    assert sum(launches("moments")) > 0


def test_a_failing_call_raises_its_own_error_after_an_unfused_retry():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=r"negative input -3\.0") as info:
            run([delayed(dk.checked_sqrt)(float(x)) for x in (4, 9, -3, 16)], batch_size=4)
    assert any("checked_sqrt(-3.0)" in note for note in info.value.__notes__)


def test_a_failing_batched_form_falls_back_to_unfused_with_a_warning():
    calls = [delayed(dk.checked_sqrt)(float(x)) for x in range(100)]
    calls[42] = delayed(dk.checked_sqrt)(-1e-300)
    with pytest.warns(RuntimeWarning, match="ran unfused"), pytest.raises(ValueError) as info:
        run(calls, batch_size=50)
    assert "negative input -1e-300" in str(info.value)


@pytest.mark.parametrize("name", ["big", "big_cuda_error"])
def test_out_of_memory_splits_the_launch(name):
    k = getattr(dk, name)
    out = run([delayed(k)(np.full(3, float(i))) for i in range(40)], batch_size=40)
    assert [r.tolist() for r in out] == [[3.0 * i] * 3 for i in range(40)]
    assert max(launches("big")) <= dk.MAX_FUSED_BEFORE_OOM


def test_user_batch_size_wins_and_is_reported():
    backend = DeviceBackend(placement="gpu")
    run([delayed(dk.saxpy)(2.0, np.ones(4), np.ones(4)) for _ in range(64)],
        backend=backend, batch_size=16)
    report = backend.report()
    assert {r["batch_size"] for r in report.values()} == {16}
    assert {r["batch_policy"] for r in report.values()} == {"fixed"}
    assert max(launches("saxpy")) <= 16


def test_max_batch_size_caps_auto_batches():
    backend = DeviceBackend(placement="gpu", max_batch_size=10)
    run([delayed(dk.saxpy)(1.0, np.ones(2), np.zeros(2)) for _ in range(200)], backend=backend)
    assert max(launches("saxpy")) <= 10
    assert all(r["batch_size"] <= 10 for r in backend.report().values())


def test_cpu_side_fusion():
    backend = DeviceBackend(placement="cpu", cpu_backend="threading")
    out = run([delayed(dk.saxpy)(float(i), np.ones(3), np.zeros(3)) for i in range(500)],
              backend=backend, batch_size=25)
    assert [r.tolist() for r in out] == [[float(i)] * 3 for i in range(500)]
    assert sum(launches("saxpy")) == 500 and max(launches("saxpy")) == 25


def test_launch_latency_makes_the_gpu_batch_grow():
    with simulate_gpus(1, launch_latency=2e-3):
        backend = DeviceBackend(placement="gpu")
        start = backend.batching.launch_sizer(backend.router.gpus[0]).size
        run([delayed(dk.logistic)(0.3, 3.2, steps=5) for _ in range(3000)], backend=backend)
        report = backend.report()["cuda:0"]
    assert report["batch_size"] > start


shapes = st.sampled_from([(3,), (4,), (2, 2)])
saxpy_calls = st.lists(st.tuples(st.floats(-4, 4, allow_nan=False), shapes,
                                 st.integers(0, 9)), max_size=30)


@settings(max_examples=25, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(calls=saxpy_calls, batch_size=st.sampled_from(["auto", 1, 4, 64]),
       return_as=st.sampled_from(["list", "generator"]))
def test_fused_results_equal_unfused_in_order(calls, batch_size, return_as):
    def args(a, shape, seed):
        x = np.arange(np.prod(shape), dtype=float).reshape(shape) + seed
        return a, x, x[::-1].copy()

    expected = [dk.saxpy(*args(*c)) for c in calls]
    out = list(run([delayed(dk.saxpy)(*args(*c)) for c in calls], batch_size=batch_size,
                   return_as=return_as))
    assert len(out) == len(expected)
    for got, want in zip(out, expected):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_an_unfused_call_out_of_memory_is_retried_alone():
    dk.FLAKY_CALLS.clear()
    backend = DeviceBackend(placement="gpu")
    out = run([delayed(dk.flaky_memory)(i) for i in range(40)], backend=backend,
              batch_size=20)
    assert out == [i + 1 for i in range(40)]
    assert sorted(dk.FLAKY_CALLS) == sorted([*range(40), 13])  # only the failed call twice
    assert all(r["batch_size"] == 20 for r in backend.report().values())
