import warnings

import pytest

import devicejoblib
from devicejoblib import (
    DEVICE_KINDS,
    MAX_SIMULATED_GPUS,
    Device,
    DeviceUnavailableError,
    InvalidDeviceError,
    cpu_count,
    devices,
    parse_devices,
    simulate_gpus,
)


def test_cpu_device_comes_first_with_joblibs_core_count():
    cpu = devices()[0]
    assert cpu.id == "cpu" and cpu.kind == "cpu" and cpu.index is None
    assert cpu.cores == cpu_count()
    assert not cpu.simulated and not cpu.is_gpu


def test_simulated_gpus_from_the_environment(monkeypatch):
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATE_GPUS", "2")
    gpus = [d for d in devices() if d.is_gpu]
    assert [d.id for d in gpus] == ["cuda:0", "cuda:1"]
    assert all(d.simulated and d.provider == "simulator" for d in gpus)
    assert all(d.memory_total == d.memory_free == 16 * 2**30 for d in gpus)
    assert str(gpus[1]) == "cuda:1 (simulated)"


@pytest.mark.parametrize("memory, expected", [
    ("8GiB", 8 * 2**30), ("512M", 512 * 2**20), ("2GB", 2 * 10**9), ("1048576", 2**20),
])
def test_simulated_memory_is_configurable(monkeypatch, memory, expected):
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATE_GPUS", "1")
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATED_MEMORY", memory)
    assert devices()[1].memory_total == expected


def test_simulate_gpus_overrides_the_environment_and_restores(monkeypatch):
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATE_GPUS", "1")
    with simulate_gpus(3, memory="1GiB"):
        inner = devices()
        with simulate_gpus(0):
            assert not any(d.simulated for d in devices())
        assert devices() == inner
    assert [d.id for d in inner] == ["cpu", "cuda:0", "cuda:1", "cuda:2"]
    assert inner[3].memory_total == 2**30
    assert [d.id for d in devices()] == ["cpu", "cuda:0"]


def test_discovery_is_cached_until_refresh(two_gpus):
    assert devices() is two_gpus
    fresh = devices(refresh=True)
    assert fresh is not two_gpus and [d.id for d in fresh] == [d.id for d in two_gpus]


@pytest.mark.parametrize("value", ["two", "-1", "1.5", str(MAX_SIMULATED_GPUS + 1), "2 gpus"])
def test_bad_simulate_gpus_env_names_value_and_range(monkeypatch, value):
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATE_GPUS", value)
    with pytest.raises(ValueError, match="DEVICEJOBLIB_SIMULATE_GPUS") as info:
        devices()
    assert repr(value) in str(info.value)
    assert f"from 0 (off) to {MAX_SIMULATED_GPUS}" in str(info.value)


@pytest.mark.parametrize("n", [-1, 2.5, "x", True, None])
def test_bad_simulate_gpus_argument(n):
    with pytest.raises(ValueError, match=r"simulate_gpus\(n\)"):
        simulate_gpus(n)


@pytest.mark.parametrize("memory", ["lots", "0", "-3G", "12 parsecs"])
def test_bad_simulated_memory(monkeypatch, memory):
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATE_GPUS", "1")
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATED_MEMORY", memory)
    with pytest.raises(ValueError, match="DEVICEJOBLIB_SIMULATED_MEMORY") as info:
        devices()
    assert repr(memory) in str(info.value) and "'16GiB'" in str(info.value)


@pytest.mark.parametrize("spec, expected", [
    (None, ["cpu", "cuda:0", "cuda:1"]),
    ("cpu", ["cpu"]),
    ("cuda", ["cuda:0", "cuda:1"]),
    ("GPU", ["cuda:0", "cuda:1"]),
    (" cuda:1 ", ["cuda:1"]),
    ("gpu:0", ["cuda:0"]),
    (1, ["cuda:1"]),
    (["cuda:1", "cpu", 1, "cuda"], ["cuda:1", "cpu", "cuda:0"]),
    (("cpu:0",), ["cpu"]),
])
def test_parse_devices(two_gpus, spec, expected):
    assert [d.id for d in parse_devices(spec)] == expected


def test_parse_devices_accepts_device_objects(two_gpus):
    assert parse_devices(two_gpus[2]) == (two_gpus[2],)


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "cuda:-1", "cpu:1", "", 2.0, True, [],
                                  ["cpu", None], "cuda:2", 7])
def test_bad_device_spec_names_it_and_what_this_machine_has(two_gpus, spec):
    with pytest.raises(InvalidDeviceError) as info:
        parse_devices(spec)
    message = str(info.value)
    assert "this machine has cpu, cuda:0 (simulated), cuda:1 (simulated)" in message
    assert repr(spec if not isinstance(spec, list) or not spec else spec[-1]) in message


def test_malformed_spec_lists_the_registered_spellings(two_gpus):
    with pytest.raises(InvalidDeviceError) as info:
        parse_devices("tpu")
    for spellings in DEVICE_KINDS.values():
        for spelling in spellings:
            assert repr(spelling) in str(info.value)


@pytest.mark.parametrize("spec", ["cuda", "gpu", "cuda:0", 0])
def test_asking_for_a_gpu_without_one_raises(no_gpu, spec):
    with pytest.raises(DeviceUnavailableError, match="this machine has cpu") as info:
        parse_devices(spec)
    assert "DEVICEJOBLIB_SIMULATE_GPUS" in str(info.value)


def test_cuda_visible_devices_empty_hides_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [d.id for d in devices()] == ["cpu"]
    with pytest.raises(DeviceUnavailableError, match="CUDA_VISIBLE_DEVICES=''"):
        parse_devices("cuda")


def test_device_to_dict_is_json_ready(two_gpus):
    import json

    as_dict = json.loads(json.dumps(two_gpus[1].to_dict()))
    assert as_dict["id"] == "cuda:0" and as_dict["simulated"] is True
    assert as_dict["platform"] == "simulator" and as_dict["kind"] == "cuda"
    assert Device.from_dict(as_dict) == two_gpus[1]


def test_public_names_are_exported():
    for name in devicejoblib.__all__:
        assert hasattr(devicejoblib, name), name


@pytest.mark.parametrize("n, expected", [(None, 2), (0, 0), (3, 3)])
def test_simulate_unless_real(no_gpu, n, expected):
    with simulate_gpus.unless_real(n) as simulation:
        assert simulation.n == expected
        assert sum(d.simulated for d in devices()) == expected


@pytest.mark.parametrize("n, expected", [(None, 3), (1, 1)])
def test_simulate_unless_real_follows_the_environment_variable(monkeypatch, n, expected):
    # set, the variable is obeyed on a machine with real GPUs as on one without
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATE_GPUS", "3")
    with simulate_gpus.unless_real(n) as simulation:
        assert simulation.n == expected
        assert [d.simulated for d in devices() if d.is_gpu] == [True] * expected


def test_simulated_loss_setting(monkeypatch):
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATE_GPUS", "2")
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATED_LOSS", "1:5")
    assert [d.lose_after for d in devices()] == [None, None, 5]
    monkeypatch.setenv("DEVICEJOBLIB_SIMULATED_LOSS", "2:5")
    with pytest.raises(ValueError, match=r"Invalid DEVICEJOBLIB_SIMULATED_LOSS='2:5'.*0 to 1"):
        devices()
