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
    rows = [line for line in out.splitlines() if line.startswith("cuda:")]
    assert [row.split()[0] for row in rows] == ["cuda:0", "cuda:1"]
    assert all(row.endswith("yes, no timing profile") and "simulated" in row for row in rows)
    assert "2 simulated GPU(s)" in out and "no timing profile, strict arrays" in out
    out = cli("info", env={"DEVICEJOBLIB_SIMULATE_GPUS": "1",
                           "DEVICEJOBLIB_SIMULATED_PROFILE": "h200"}).stdout
    row = next(line for line in out.splitlines() if line.startswith("cuda:0"))
    assert "simulated GPU (h200 profile)" in row and "139.8 GiB" in row and " 132 " in row
    assert row.endswith("yes, h200 profile")


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


def test_bench_writes_table_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = cli("bench", "--workload", "saxpy", "--sizes", "100,1000", "--calls", "20",
               "--repeat", "1", "--json", str(out_json), "--plot", str(out_png),
               "--explain", env={"DEVICEJOBLIB_SIMULATE_GPUS": "2"})
    assert "SIMULATED" in proc.stdout
    assert "size 1000, auto (the whole run, warm-up included):\n" \
        "devicejoblib.kernels.elementwise.saxpy, size ~16.0 KiB:" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if "placement" in line)
    assert header.split()[:5] == ["size", "placement", "calls/s", "ms/call", "vs"]
    results = json.loads(out_json.read_text())
    assert [(r["size"], r["placement"]) for r in results["rows"]] == [
        (size, placement) for size in (100, 1000) for placement in ("cpu", "gpu", "auto")]
    assert [r["placement"] for r in results["mixed"]] == ["cpu", "gpu", "auto"]
    allowed = {"cpu": {"cpu"}, "gpu": {"cuda:0", "cuda:1"}, "auto": {"cpu", "cuda:0", "cuda:1"}}
    for row in results["rows"] + results["mixed"]:
        assert sum(row["ran_on"].values()) == 20
        assert set(row["ran_on"]) <= allowed[row["placement"]]
    assert "mixed (sizes 100 and 1000 interleaved): fastest" in proc.stdout
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_without_gpus_runs_the_cpu_placement_only(tmp_path):
    out_json = tmp_path / "bench.json"
    cli("bench", "--workload", "logistic", "--sizes", "10", "--calls", "10", "--repeat", "1",
        "--simulate-gpus", "0", "--json", str(out_json), env={"CUDA_VISIBLE_DEVICES": ""})
    results = json.loads(out_json.read_text())
    assert [r["placement"] for r in results["rows"]] == ["cpu"]


@pytest.mark.parametrize("option, value", [("--sizes", "10,zero"), ("--sizes", "0"),
                                           ("--calls", "0"), ("--workload", "nbody")])
def test_bench_rejects_bad_options(option, value):
    proc = cli("bench", option, value, check=False)
    assert proc.returncode == 2 and value in proc.stderr


@pytest.mark.parametrize("option, value, why", [
    ("--json", "/nonexistent-dir/bench.json", "its folder must exist"),
    ("--plot", "bench.txt", "expected a file ending in .png"),
    ("--json", "/", "expected a file ending in .json"),
])
def test_bench_refuses_an_output_it_could_not_write_before_running(option, value, why):
    proc = cli("bench", "--workload", "saxpy", option, value, check=False,
               env={"DEVICEJOBLIB_SIMULATE_GPUS": "2"})
    assert proc.returncode == 2 and f"Invalid {option}={value!r}" in proc.stderr
    assert why in proc.stderr and "calls/s" not in proc.stdout  # nothing was run


def test_crossover_is_where_the_gpu_starts_to_stay_faster():
    from devicejoblib._bench import crossover

    def rows(speedups):
        return [{"size": size, "placement": "gpu", "speedup_vs_cpu": s}
                for size, s in speedups.items()]

    assert crossover(rows({10: 0.5, 100: 0.9, 1000: 2.0, 10000: 3.0})) == 1000
    assert crossover(rows({10: 0.5, 100: 1.5, 1000: 0.9, 10000: 3.0})) == 10000
    assert crossover(rows({10: 2.0, 100: 3.0})) is None  # faster everywhere
    assert crossover(rows({10: 0.5, 100: 0.7})) is None
