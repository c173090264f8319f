"""joblib's own test_parallel.py, run with "device" as the default backend (slow).

Existing joblib code must run unchanged under ``parallel_config(backend="device")``. The
tests that fail by design are listed with the reason; any other failure is a regression.
Run with ``pytest -m slow tests/test_joblib_suite.py``.
"""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

#: test name prefix -> why it fails under a default backend that is not joblib's own
EXPECTED = {
    "test_backend_hinting_and_constraints": "asserts the default backend's class",
    "test_warning_about_timeout_not_supported_by_backend": "asserts the default backend",
    "test_nested_loop[": "nested Parallel(backend='device') in a loky worker process "
                         "whose code never imported devicejoblib (nothing registered it)",
    "test_threadpool_limitation_in_child_loky[-2]": "with GPUs, effective_n_jobs(-2) on 2 "
                                                   "cores is 2 (the GPU workers), loky's 1: "
                                                   "the expected child limit differs",
}

CONFTEST = """
    import joblib
    from devicejoblib import DeviceBackend

    joblib.register_parallel_backend("device", DeviceBackend, make_default=True)
"""


@pytest.mark.parametrize("simulated_gpus", ["0", "2"])
def test_joblib_parallel_suite_under_the_device_backend(tmp_path, simulated_gpus):
    joblib = pytest.importorskip("joblib")
    shutil.copytree(Path(joblib.__file__).parent / "test", tmp_path / "jtest")
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "jtest/test_parallel.py"], cwd=tmp_path, capture_output=True, text=True,
        timeout=1800, env={**os.environ, "DEVICEJOBLIB_SIMULATE_GPUS": simulated_gpus})
    failed = re.findall(r"^FAILED jtest/test_parallel.py::(\S+)", proc.stdout, re.M)
    unexpected = [name for name in failed if not name.startswith(tuple(EXPECTED))]
    assert not unexpected, proc.stdout[-3000:]
    assert re.search(r"\d+ passed", proc.stdout), proc.stdout[-3000:]
