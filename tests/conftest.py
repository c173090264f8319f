import contextlib
import gc
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest

import devicejoblib
from devicejoblib import simulate_gpus

TESTS_DIR = Path(__file__).parent
_ENV_KNOBS = ("DEVICEJOBLIB_SIMULATE_GPUS", "DEVICEJOBLIB_SIMULATED_MEMORY",
              "DEVICEJOBLIB_SIMULATED_STRICT", "DEVICEJOBLIB_SIMULATED_PROFILE",
              "DEVICEJOBLIB_SIMULATED_LAUNCH_LATENCY", "DEVICEJOBLIB_SIMULATED_LOSS",
              "CUDA_VISIBLE_DEVICES", "NUMBA_ENABLE_CUDASIM")


def pytest_collection_modifyitems(config, items):
    if devicejoblib.is_available("cuda", simulated=False):
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none usable on this machine)")
    for item in items:
        if item.get_closest_marker("gpu") or item.get_closest_marker("multi_gpu"):
            item.add_marker(skip)


def device_kinds(gpus_only=False):
    """One test parameter per registered platform (kind of device), named after it;
    real GPUs' marked ``gpu``."""
    return [pytest.param(platform, id=platform.name,
                         marks=[pytest.mark.gpu] if platform.is_gpu and not platform.simulated
                         else [])
            for platform in devicejoblib.platforms() if platform.is_gpu or not gpus_only]


@contextlib.contextmanager
def devices_of(platform):
    """This machine's devices of ``platform`` (two simulated GPUs for the simulator)."""
    with simulate_gpus(2 if platform.simulated else 0), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = [d for d in devicejoblib.devices() if d.platform is platform]
        if not found:
            pytest.skip(f"no {platform.name} device on this machine")
        yield found


def saved_samples(device_kind, kernel=""):
    """The seconds per call the saved model file (``DEVICEJOBLIB_MODEL_PATH``) holds for
    the kernels named ``kernel...`` on devices of ``device_kind``."""
    saved = json.loads(Path(os.environ["DEVICEJOBLIB_MODEL_PATH"]).read_text())
    return [sample for host in saved["hosts"].values()
            for key, history in host["history"].items()
            if key.startswith(kernel) and f"\x1f{device_kind}:" in key
            for sample in history["samples"]]


@pytest.fixture(params=device_kinds(gpus_only=True))
def gpus(request):
    """The GPUs a test runs on: two simulated ones, or this machine's real ones."""
    with devices_of(request.param) as found:
        yield found


@pytest.fixture
def two_gpus():
    """This machine's devices with two simulated GPUs: cpu, cuda:0, cuda:1 (simulated
    while the test runs)."""
    with simulate_gpus(2):
        yield devicejoblib.devices()


@pytest.fixture(params=device_kinds())
def kind_devices(request):
    """The devices of each kind in turn: the CPU, simulated GPUs, real ones."""
    with devices_of(request.param) as found:
        yield found


@pytest.fixture
def registry(monkeypatch):
    """The registries of platforms and array libraries, and discovery's cache, restored
    after the test."""
    from devicejoblib import _platforms, arrays

    saved = dict(_platforms._PLATFORMS), dict(arrays.REGISTERED)
    monkeypatch.setattr(devicejoblib._devices, "_cache", {})
    yield _platforms
    for registered, before in zip((_platforms._PLATFORMS, arrays.REGISTERED), saved):
        registered.clear()
        registered.update(before)
    arrays.array_types_changed()


@pytest.fixture
def fresh_warnings(monkeypatch):
    """No once-only warning given yet in this process (restored after the test)."""
    monkeypatch.setattr(devicejoblib._utils, "_warned", set())


@pytest.fixture
def no_gpu():
    """This machine as it is without simulation, for tests of life without a GPU
    (skipped where a real GPU is present)."""
    with simulate_gpus(0), warnings.catch_warnings():
        warnings.simplefilter("ignore", devicejoblib.DeviceDiscoveryWarning)
        found = devicejoblib.devices()
        if any(d.is_gpu for d in found):
            pytest.skip("this machine has a real GPU")
        yield found


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves worker threads, child processes or simulation behind."""
    threads = set(threading.enumerate())
    children = set(multiprocessing.active_children())
    yield
    assert simulate_gpus._active is None, "simulate_gpus() was left on: use it with `with`"
    # a backend left by a parallel_config block stops its threads when collected; an
    # error's traceback may hold it in a cycle until the collector runs
    gc.collect()
    # after an error the backend stops GPU threads without waiting for the call they
    # run: they may take a moment to exit, not longer
    for thread in set(threading.enumerate()) - threads:
        if thread.name.startswith("devicejoblib"):
            thread.join(timeout=10)
    stray = [t for t in set(threading.enumerate()) - threads
             if t.name.startswith("devicejoblib")
             or not (t.daemon or "loky" in type(t).__module__)]  # loky's reusable executor
    assert not stray, f"threads left running: {stray}"
    new_children = [p for p in set(multiprocessing.active_children()) - children
                    if "Loky" not in type(p).__name__]
    assert not new_children, f"child processes left running: {new_children}"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """Each test starts from the documented defaults of devicejoblib's settings, and a
    placement model of its own (never the user's)."""
    for name in _ENV_KNOBS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEVICEJOBLIB_MODEL_PATH", str(tmp_path / "placement-model.json"))


@pytest.fixture
def run_python():
    """Run Python code in a fresh interpreter, optionally with modules made unimportable.

    Returns the CompletedProcess; ``json_out=True`` parses stdout as JSON instead.
    """

    def run(code, block=(), env=None, json_out=False, check=True):
        preamble = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in block)
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(TESTS_DIR), *filter(None, [full_env.get("PYTHONPATH")])])
        proc = subprocess.run([sys.executable, "-c", preamble + textwrap.dedent(code)],
                              capture_output=True, text=True, env=full_env, timeout=120)
        if check:
            assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout) if json_out else proc

    return run
