"""Bad input is refused where it is given, with an error that names the value and what is
allowed: nothing is silently accepted, and nothing fails later somewhere else."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import devicejoblib
from devicejoblib import (
    DeviceBackend,
    DeviceUnavailableError,
    Parallel,
    delayed,
    kernel,
    parse_devices,
    simulate_gpus,
)


def identity(x):
    return x


@pytest.mark.parametrize("call, error, message", [
    (lambda: DeviceBackend(keep_on_device="no"), ValueError,
     r"Invalid keep_on_device='no': expected True or False"),
    (lambda: kernel(identity, nogil="yes"), ValueError,
     r"Invalid nogil='yes': expected True or False"),
    (lambda: kernel(identity, gpu_only=True, portable=True), ValueError,
     r"gpu_only=True, portable=True.*choose one"),
    (lambda: kernel(5), TypeError, r"Invalid kernel function 5: expected a function"),
    (lambda: kernel("cuda"), TypeError,
     r"Invalid kernel function 'cuda': expected a function: use @kernel, or @kernel\("),
    (lambda: kernel(identity).cuda(3), TypeError,
     r"Invalid GPU implementation of 'identity' 3: expected a function"),
    (lambda: kernel(identity).setup("weights"), TypeError,
     r"Invalid setup of 'identity' 'weights'"),
    (lambda: DeviceBackend(placment="gpu"), TypeError,
     r"placment='gpu' for the device backend: did you mean placement="),
    (lambda: simulate_gpus(1, memory=0.1), ValueError,
     r"Invalid memory 0.1: expected a positive number of bytes"),
    (lambda: simulate_gpus(1, memory="99999999TB"), ValueError,
     r"Invalid memory='99999999TB'.*1 KiB to 1 PiB"),
])
def test_refused_with_the_value_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("memory", ["0.1", "99999999TB"])
def test_simulated_memory_setting_is_checked(monkeypatch, memory):
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATE_GPUS", "1")
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATED_MEMORY", memory)
    with pytest.raises(ValueError, match=f"Invalid DEVICEJOBLIB_SIMULATED_MEMORY='{memory}'"):
        devicejoblib.devices()


def test_numpy_integers_are_gpu_indices(two_gpus):
    assert parse_devices(np.int64(1)) == parse_devices(1)


def test_a_gpu_only_kernel_without_a_gpu_fails_at_dispatch_in_the_caller(no_gpu):
    from device_kernels import gpu_only

    with pytest.raises(DeviceUnavailableError, match=r"'gpu_only' has only a GPU "
                       r"implementation and no GPU to run on: .* are cpu"):
        Parallel(n_jobs=2, backend=DeviceBackend())(delayed(gpu_only)(i) for i in range(4))


values = st.one_of(st.none(), st.booleans(), st.integers(-5, 70), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(-2, 3), max_size=3))


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(["devices", "placement", "cpu_backend", "n_cpu_jobs",
                             "keep_on_device", "max_batch_size"]), value=values)
def test_backend_arguments_are_accepted_or_refused_clearly(name, value):
    with simulate_gpus(2):
        try:
            backend = DeviceBackend(**{name: value})
        except (ValueError, TypeError, DeviceUnavailableError) as exc:
            assert "Invalid" in str(exc) or "no cuda device" in str(exc), exc
        else:
            backend.shutdown()


@settings(max_examples=100, deadline=None)
@given(flags=st.fixed_dictionaries({}, optional={
    "nogil": values, "gpu_only": values, "portable": values}))
def test_kernel_flags_are_booleans_or_refused(flags):
    try:
        made = kernel(identity, **flags)
    except ValueError as exc:
        assert "Invalid" in str(exc) or "choose one" in str(exc)
    else:
        assert all(isinstance(v, bool) for v in flags.values())
        assert made.has_cpu != bool(flags.get("gpu_only"))
