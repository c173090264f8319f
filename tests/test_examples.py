"""The runnable examples run, on simulated GPUs, with small arguments."""

import json
import os
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
    "torch_inference.py": (["--batches", "12", "--images", "4"],
                           "networks built per device: {'cuda:0': 1, 'cuda:1': 1}"),
}

# Runs an example as its own __main__, then prints, as the last line of its output, what
# it left behind before the interpreter exits: loky's resource tracker deletes leaked
# files then, and loky's workers and threads are the only ones meant to outlive a call.
RUNNER = """
import gc, json, multiprocessing, os, runpy, sys, threading
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
gc.collect()
for thread in threading.enumerate():
    if thread.name.startswith("devicejoblib"):
        thread.join(timeout=10)  # a backend's threads end soon after it is shut down
threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()
           and (t.name.startswith("devicejoblib")
                or not (t.daemon or "loky" in type(t).__module__))]
children = [p.name for p in multiprocessing.active_children()
            if "Loky" not in type(p).__name__]
print()
print(json.dumps({"temporary files": os.listdir(os.environ["JOBLIB_TEMP_FOLDER"]),
                  "threads": threads, "child processes": children}))
"""


def examples_folder():
    """The examples/ folder; the test is skipped where there is none."""
    if not EXAMPLES.is_dir():
        pytest.skip(f"no examples folder at {EXAMPLES} (not run from a checkout)")
    return EXAMPLES


@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_runs(script, tmp_path):
    args, expected = RUNS[script]
    if script.startswith("torch"):
        pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(examples_folder() / script),
                           *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DEVICEJOBLIB_SIMULATE_GPUS": "2",
                               "JOBLIB_TEMP_FOLDER": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    output, _, last = proc.stdout.rstrip("\n").rpartition("\n")
    assert expected in output
    assert json.loads(last) == {"temporary files": [], "threads": [], "child processes": []}
    # loky's resource tracker also cleans up, when the process has ended, the semaphores
    # and shared memory it was told of and no one released: the process is gone by
    # then, and the tracker's warning on stderr is all that says so
    assert "leaked" not in proc.stderr, proc.stderr[-2000:]


def test_every_example_is_tested():
    found = sorted(p.name for p in examples_folder().glob("*.py"))
    assert found == sorted(RUNS)
