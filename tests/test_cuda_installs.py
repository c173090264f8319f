"""Discovery on the installs users have: no CuPy, CuPy without a usable CUDA driver,
Numba (with its CUDA simulator). Each case runs in a fresh interpreter, as a user's
program would, so that caches and once-only warnings start empty."""

import importlib.util

import pytest

needs_cupy = pytest.mark.skipif(importlib.util.find_spec("cupy") is None,
                                reason="CuPy is not installed")
needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                 reason="Numba is not installed")

DISCOVER = """
    import json, sys, warnings
    import devicejoblib
    {setup}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = devicejoblib.devices()
        devicejoblib.devices(refresh=True)
    print(json.dumps({{
        "ids": [d.id for d in found if not d.simulated],
        "warnings": [str(w.message) for w in caught
                     if issubclass(w.category, devicejoblib.DeviceDiscoveryWarning)],
        "cupy_imported": sys.modules.get("cupy") is not None,
    }}))
"""
# Bypass the driver-library check so that the CUDA packages' own probes run and fail
# the way they do on a machine without a usable driver.
FORCE_PROBE = ("from devicejoblib._platforms import CUDAPlatform; "
               "CUDAPlatform.unavailable_reason = lambda self: None")


def discover(run_python, setup="", block=(), env=None):
    return run_python(DISCOVER.format(setup=setup), block=block, env=env, json_out=True)


def _skip_on_real_gpu(out):
    if len(out["ids"]) > 1:
        pytest.skip("this machine has a usable CUDA device")


def test_without_cuda_packages_only_the_cpu_and_no_warning(run_python):
    out = discover(run_python, block=("cupy", "numba"))
    assert out == {"ids": ["cpu"], "warnings": [], "cupy_imported": False}


@needs_cupy
def test_cupy_without_driver_warns_once_and_runs_on_cpu(run_python):
    out = discover(run_python)
    _skip_on_real_gpu(out)
    assert out["ids"] == ["cpu"]
    assert len(out["warnings"]) == 1
    assert "cupy" in out["warnings"][0] and "runs on the CPU" in out["warnings"][0]
    assert out["cupy_imported"] is False  # no driver: CuPy's import cost is skipped


@needs_cupy
def test_cupy_probe_failure_is_a_warning_not_an_error(run_python):
    out = discover(run_python, setup=FORCE_PROBE, block=("numba",))
    _skip_on_real_gpu(out)
    assert out["ids"] == ["cpu"] and out["cupy_imported"] is True
    assert len(out["warnings"]) == 1
    assert "cupy found no usable GPU: CUDARuntimeError" in out["warnings"][0]


@needs_numba
def test_numba_without_driver_is_silent(run_python):
    """Numba is a CPU JIT as often as a CUDA one: its presence alone is no GPU intent."""
    out = discover(run_python, setup=FORCE_PROBE, block=("cupy",))
    _skip_on_real_gpu(out)
    assert out == {"ids": ["cpu"], "warnings": [], "cupy_imported": False}


@needs_numba
def test_numba_cuda_simulator_is_never_taken_for_a_gpu(run_python):
    out = run_python("""
        import json
        import devicejoblib, devicejoblib._cli as cli
        from devicejoblib._platforms import CUDAPlatform
        CUDAPlatform.unavailable_reason = lambda self: None
        print(json.dumps(cli.info_report()))
    """, block=("cupy",), env={"NUMBA_ENABLE_CUDASIM": "1"}, json_out=True)
    assert [d["id"] for d in out["devices"]] == ["cpu"]
    assert out["numba_cuda_simulator"] is True
    assert any("NUMBA_ENABLE_CUDASIM=1 makes numba.cuda a simulator" in n for n in out["notes"])
