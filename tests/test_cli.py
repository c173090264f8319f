import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args, env=None, check=True):
    import os

    proc = subprocess.run([sys.executable, "-m", "devicejoblib", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_info_prints_versions_and_a_device_table():
    out = cli("info").stdout
    assert out.startswith("devicejoblib ")
    for package in ("joblib", "numpy", "numba", "cupy"):
        assert f"\n  {package}" in out
    header = next(line for line in out.splitlines() if line.startswith("device  "))
    assert header.split() == ["device", "name", "memory", "free", "SMs", "cores", "CC",
                              "simulated"]
    assert any(line.startswith("cpu ") for line in out.splitlines())


def test_info_shows_simulated_gpus():
    out = cli("info", env={"DEVICEJOBLIB_SIMULATE_GPUS": "2"}).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("cuda:")]
    assert [row[0] for row in rows] == ["cuda:0", "cuda:1"]
    assert all(row[-1] == "yes" and "simulated" in row for row in rows)
    assert "2 simulated GPU(s)" in out


def test_info_without_gpu_says_so():
    proc = cli("info", env={"CUDA_VISIBLE_DEVICES": ""})
    assert "No GPU: calls run on the CPU" in proc.stdout
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in proc.stdout
    assert proc.stderr == ""


def test_info_json():
    report = json.loads(cli("info", "--json", env={"DEVICEJOBLIB_SIMULATE_GPUS": "1"}).stdout)
    assert set(report) >= {"devicejoblib", "python", "packages", "cuda", "notes", "devices"}
    assert [d["id"] for d in report["devices"]] == ["cpu", "cuda:0"]
    assert report["devices"][1]["simulated"] is True
    assert report["packages"]["joblib"]


def test_bad_setting_is_a_clear_error_not_a_traceback():
    proc = cli("info", env={"DEVICEJOBLIB_SIMULATE_GPUS": "lots"}, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("devicejoblib: error: Invalid DEVICEJOBLIB_SIMULATE_GPUS='lots'")
    assert "Traceback" not in proc.stderr


SCRIPT = shutil.which("devicejoblib", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(SCRIPT is None, reason="console script not installed beside Python")
def test_console_script_is_installed():
    proc = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("devicejoblib ")
