"""The runnable examples run, on simulated GPUs, with small arguments."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
RUNS = {
    "bandit_study.py": (["--runs", "8", "--horizon", "50"], "mean regret after 50 pulls"),
    "multi_gpu_inference.py": (["--batches", "20", "--rows", "8"],
                               "weights made per device: {'cuda:0': 1, 'cuda:1': 1}"),
    "compare_cpu_gpu.py": (["--calls", "6"], "speed-up"),
}


@pytest.mark.skipif(not EXAMPLES.exists(), reason="not run from a checkout")
@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_runs(script):
    import os

    args, expected = RUNS[script]
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "DEVICEJOBLIB_SIMULATE_GPUS": "2"})
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout
    assert "leaked" not in proc.stderr


def test_every_example_is_tested():
    if EXAMPLES.exists():
        assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(RUNS)
