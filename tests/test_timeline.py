"""The timeline (trace=) and the progress bar (progress=True) of a run."""

import itertools
import json
import re

import numpy as np
import pytest

import devicejoblib
from device_kernels import locate, saxpy
from devicejoblib import DeviceBackend, Parallel, delayed, parallel_config, simulate_gpus

pytestmark = pytest.mark.skipif(not devicejoblib.USE_JOBLIB, reason="needs joblib")


def mixed_calls(n):
    """Kernels for the GPUs (saxpy, fused) and plain calls for the CPU workers."""
    return [delayed(saxpy)(float(i), np.ones(8), np.ones(8)) if i % 2
            else delayed(abs)(-i) for i in range(n)]


def test_the_trace_has_a_track_per_worker_and_a_slice_per_launch_or_batch(tmp_path):
    path = tmp_path / "run.json"
    with simulate_gpus(2), parallel_config(backend="device", trace=str(path)):
        for _ in range(2):
            out = Parallel(n_jobs=2)(mixed_calls(200))
    assert out[0] == 0 and out[1].tolist() == [2.0] * 8
    events = json.loads(path.read_text())["traceEvents"]
    tracks = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert {"cuda:0 (simulated)", "cuda:1 (simulated)"} <= set(tracks.values())
    assert any(name.startswith("cpu (processes)") for name in tracks.values())
    slices = [e for e in events if e["ph"] == "X"]
    assert sum(e["args"]["calls"] for e in slices) == 400  # every call, once
    assert {e["name"] for e in slices} == {"saxpy", "abs"}
    gpu = [e for e in slices if tracks[e["tid"]].startswith("cuda")]
    assert {e["name"] for e in gpu} == {"saxpy"} and all(e["args"]["bytes"] > 0 for e in gpu)
    # simulated GPUs' cost timer is the wall clock: working all the slice long
    assert all(0 < e["args"]["working_ms"] <= e["dur"] / 1e3 + 0.01 for e in gpu)
    assert {e["args"]["placed"] for e in slices} == {"rule"}
    for tid in tracks:  # a track's slices follow each other
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in slices if e["tid"] == tid)
        assert all(end <= next_start + 1 for (_, end), (next_start, _) in
                   itertools.pairwise(spans))


def test_the_progress_bar_counts_calls_per_device(two_gpus, capsys):
    backend = DeviceBackend(progress=True, cpu_backend="threading")
    Parallel(n_jobs=2, backend=backend)(delayed(locate)(i) for i in range(40))
    Parallel(n_jobs=2, backend=backend)(mixed_calls(30))
    lines = capsys.readouterr().err.strip().splitlines()
    finals = [line for line in lines if re.match(r"devicejoblib: (\d+)/\1 calls", line)]
    assert len(finals) == 2
    for final, total in zip(finals, (40, 30)):
        counts = dict((d, int(n)) for d, n in re.findall(r"([\w:-]+) (\d+)(?=[,)])", final))
        assert sum(counts.values()) == total
    assert "cuda:" in finals[0]
    assert "cpu-threads" in finals[1]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"trace": 5}, TypeError, r"Invalid trace=5: expected a file path or None"),
    ({"trace": ""}, ValueError, r"Invalid trace='': expected a file path"),
    ({"trace": "/"}, ValueError, r"Invalid trace='/': a folder"),
    ({"trace": "/nonexistent-dir/run.json"}, ValueError,
     r"Invalid trace='/nonexistent-dir/run.json': its folder '/nonexistent-dir' does not"),
    ({"progress": "yes"}, ValueError, r"Invalid progress='yes': expected True or False"),
])
def test_bad_timeline_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        DeviceBackend(**kwargs)
