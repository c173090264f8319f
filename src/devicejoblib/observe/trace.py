"""A timeline of a run: Chrome trace-event JSON (Perfetto, chrome://tracing) with one
track per GPU worker and per CPU route, and a slice per launch group or batch."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from .._joblib_adapters import known_total
from .._specs import CPU_PROCESSES, CPU_THREADS
from .._utils import array_nbytes, warn_once, write_json_atomically
from .bookkeeping import after

#: The trace's tracks of the CPU routes (GPUs are named by their ids).
CPU_TRACKS = {CPU_PROCESSES: "cpu (processes)", CPU_THREADS: "cpu (threads)"}


class Trace:
    """Slices recorded while a backend runs, written to ``path`` (rewritten whole at the
    end of each ``Parallel`` call, atomically).

    Parameters
    ----------
    path : str or os.PathLike
    """

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._origin = time.perf_counter()
        self._events = []
        self._tracks = {}  # track (lane) name -> thread id in the trace
        self._ends = {}  # track -> when each of its lanes is free

    def slice(self, track, name, start, seconds, **args):
        """A slice on ``track`` from ``start`` (``time.perf_counter()``) for ``seconds``."""
        with self._lock:
            # slices of one track must not overlap: a busy track gets a lane beside it
            # (several CPU workers behind one route)
            lane, lanes = 0, self._ends.setdefault(track, [])
            while lane < len(lanes) and lanes[lane] > start:
                lane += 1
            if lane == len(lanes):
                lanes.append(0.0)
            lanes[lane] = start + seconds
            name_of_lane = track if lane == 0 else f"{track} #{lane + 1}"
            tid = self._tracks.setdefault(name_of_lane, len(self._tracks) + 1)
            self._events.append({"name": name, "cat": "devicejoblib", "ph": "X",
                                 "ts": round((start - self._origin) * 1e6, 1),
                                 "dur": round(seconds * 1e6, 1), "pid": os.getpid(),
                                 "tid": tid, "args": args})

    def write(self):
        """Write the trace so far (a no-op before the first slice)."""
        with self._lock:
            if not self._events:
                return
            pid = os.getpid()
            names = [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                      "args": {"name": track}} for track, tid in self._tracks.items()]
            names.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                          "args": {"name": "devicejoblib"}})
            data = {"traceEvents": names + self._events, "displayTimeUnit": "ms"}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomically(self.path, data)
        except OSError as exc:
            _unwritable(self.path, exc)


def _unwritable(path, exc):
    warn_once(f"the trace could not be written to {path} ({type(exc).__name__}: {exc}): "
              "give trace= a writable file path", RuntimeWarning, key=("trace", str(path)))


def describe_part(items):
    """``(slice name, args)`` of the calls of a part: kernels, calls and bytes."""
    names, moved = {}, 0
    for function, args, kwargs in items:
        name = getattr(function, "__qualname__", None) or repr(function)
        names[name] = names.get(name, 0) + 1
        for value in (*args, *kwargs.values()):
            moved += array_nbytes(value) if hasattr(value, "shape") else 0
    return " + ".join(names), {"calls": len(items), "bytes": moved,
                               "kernels": names}


def watched(target, batch, callback, progress=None, trace=None, parallel=None):
    """``callback``, preceded by counting the part's calls in the progress bar and,
    for CPU parts, a slice in the trace (GPU workers trace their own groups)."""
    n_calls, start = len(batch), time.perf_counter()
    items = batch.items if trace is not None and not target.is_gpu else None

    def watch(future):
        if items is not None and not future.exception():
            name, args = describe_part(items)
            end = time.perf_counter()
            # the worker's own time where it was measured, else from submission
            seconds = getattr(future, "worker_seconds", None) or end - start
            trace.slice(CPU_TRACKS.get(target.route, target.route), name, end - seconds,
                        seconds, placed=target.placed, **args)
        if progress is not None:
            progress.update(n_calls, target.route, known_total(parallel))

    return after(watch, callback, "the trace or progress bar")
