"""Learned placement (``placement="auto"``): each kernel call goes to the device where it
is expected to finish first, by a cost model learnt from the workers' measurements.

In the manner of StarPU's ``dmda`` scheduler: for every device placement allows, the
expected finish of a call is the time that device's queue frees up (the predicted time
of the calls routed there and not done, over its parallel workers) plus moving the call's
arguments there plus its predicted run time. Predictions come from a history per
(kernel, footprint, device model): the footprint buckets the size of a call's work as
its arguments show it (array bytes, integer counts), the run time per call is what the
workers measure (a fused launch or a batch, divided by its calls). Until a history has
:data:`CALIBRATION` samples, calls are sent there on purpose to measure it (the first
sample of each history, compilation and warm-up, is dropped; the median of the last
:data:`KEEP` samples predicts, so outliers do not poison it); footprints never seen are
predicted from the calibrated ones by a regression of log time on log size.
"""

from __future__ import annotations

import collections
import heapq
import math
import statistics
import threading

import numpy as np

from .._kernels import Kernel
from .._utils import array_nbytes, format_bytes

#: Samples a (kernel, footprint, device model) needs before its prediction is trusted
#: (StarPU asks 10; a sample here is a whole launch or batch, each of many calls).
CALIBRATION = 5
#: Samples kept per history: the median of these is the prediction.
KEEP = 32
#: Seconds of predicted work above which a batch's calls of one kernel and footprint are
#: spread over the devices call by call; below, they go to one device together (a part
#: costs a dispatch: well under this).
SPLIT_ABOVE = 0.2
#: Footprint buckets per doubling of a call's size.
BUCKETS_PER_OCTAVE = 2
#: A device the model sent none of a kernel's calls (of one footprint) for this many of
#: them gets one, to measure it again: a verdict is revisited, at a bounded cost (at most
#: one call in this many per device), so one bad early sample cannot rule it out for good.
REMEASURE_EVERY = 64

#: Why a call went where it did, as ``explain()`` shows it.
FASTEST, CALIBRATING, ONLY_ONE = "expected to finish first", "calibrating", "only choice"
ONLY_MEASURED = "the only one measured yet"
REMEASURING = f"measured again (no call in {REMEASURE_EVERY})"


def footprint(args, kwargs):
    """The bucket of a call's size: the bytes of its array arguments plus 8 bytes per
    unit of its integer arguments (a step count) and per item of its lists and tuples,
    in half octaves."""
    size = 0
    for value in (*args, *kwargs.values()):
        if hasattr(value, "nbytes") and hasattr(value, "shape"):
            size += array_nbytes(value)
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            size += 8 * abs(int(value))
        elif isinstance(value, (list, tuple)):
            size += 8 * len(value)
    return round(math.log2(size + 1) * BUCKETS_PER_OCTAVE)


def bucket_size(bucket):
    """The size a footprint bucket stands for."""
    return 2 ** (bucket / BUCKETS_PER_OCTAVE)


def kernel_key(kernel):
    """The name a kernel's histories are kept under (the same in every process)."""
    return kernel.resident_key


def device_model(device):
    """The name a device's histories are kept under: its kind and model."""
    return f"{device.kind}:{device.name}"


class History:
    """The measured seconds per call of one (kernel, footprint, device model)."""

    __slots__ = ("_median", "samples", "seen")

    def __init__(self, samples=(), seen=0):
        self.samples = list(samples)[-KEEP:]
        self.seen = max(seen, len(self.samples))
        self._median = None

    def add(self, seconds):
        self.seen += 1
        if self.seen == 1:
            return  # the first: compilation, caches, warm-up
        self.samples.append(seconds)
        del self.samples[:-KEEP]
        self._median = None

    @property
    def median(self):
        # kept until the next sample: placing a batch asks for it once per device, and
        # np.median's 15-20 us each were a third of the dispatch cost of small calls
        if self._median is None and self.samples:
            self._median = statistics.median(self.samples)
        return self._median


_held = threading.local()  # per thread: sample key -> its first sample, held back


def hold_first(key, n_calls, seconds):
    """A sample this thread took of ``key``: None when it is the thread's first (a
    thread's first launch of a kernel is mostly setup, such as CuPy's per-thread handles:
    30-40 ms a call beside 0.1 ms later on an H200), which is held back; else
    ``(n_calls, seconds)`` to record, and the held one is dropped."""
    held = _held.__dict__.setdefault("samples", {})
    if key not in held:
        held[key] = (n_calls, seconds)
        return None
    held[key] = None
    return n_calls, seconds


def release_held():
    """The calling thread ends: its first samples of keys it took no later sample of, as
    ``[(key, n_calls, seconds)]`` to record (a thread that ran a kernel at a footprint
    once paid its setup for those calls alone: that is what they cost)."""
    held = _held.__dict__.pop("samples", {})
    return [(key, *sample) for key, sample in held.items() if sample is not None]


class CostModel:
    """Run-time histories per (kernel, device model, footprint), and each device model's
    settled launch size per kernel; shared by every backend of a process (and saved
    between processes by :mod:`devicejoblib._model_store`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.histories = {}  # (kernel, device model) -> {bucket: History}
        self.launch_sizes = {}  # (device model, kernel) -> calls per fused launch
        self.dirty = set()  # keys of histories and launch sizes changed since the load

    def record(self, kernel, model, bucket, seconds_per_call):
        with self._lock:
            buckets = self.histories.setdefault((kernel, model), {})
            buckets.setdefault(bucket, History()).add(seconds_per_call)
            self.dirty.add(("history", kernel, model, bucket))

    def samples(self, kernel, model, bucket):
        with self._lock:
            history = self.histories.get((kernel, model), {}).get(bucket)
            return len(history.samples) if history is not None else 0

    def predict(self, kernel, model, bucket):
        """``(seconds per call or None, how)``: how is ``"measured"`` (a calibrated
        history), ``"regression"`` (from calibrated neighbours), ``"few samples"`` or
        ``"unknown"``; the first two are trusted."""
        with self._lock:  # (workers record meanwhile)
            buckets = self.histories.get((kernel, model), {})
            history = buckets.get(bucket)
            if history is not None and len(history.samples) >= CALIBRATION:
                return history.median, "measured"
            known = [(b, h.median) for b, h in buckets.items()
                     if len(h.samples) >= CALIBRATION]
            few = history.median if history is not None and history.samples else None
        if len(known) >= 2:
            x = np.log([bucket_size(b) for b, _ in known])
            y = np.log([max(t, 1e-9) for _, t in known])
            slope, intercept = np.polyfit(x, y, 1)
            return float(np.exp(intercept + slope * math.log(bucket_size(bucket)))), \
                "regression"
        if few is not None:
            return few, "few samples"
        return None, "unknown"

    def launch_size(self, model, kernel):
        return self.launch_sizes.get((model, kernel))

    def set_launch_size(self, model, kernel, size):
        with self._lock:
            if self.launch_sizes.get((model, kernel)) != size:
                self.launch_sizes[(model, kernel)] = size
                self.dirty.add(("launch", model, kernel))


class AutoPlacer:
    """Chooses a device for each call of an ``auto`` kernel and keeps what is queued.

    Parameters
    ----------
    model : CostModel
    slots : callable
        ``slots(device)``: how many calls the device runs at once (CPU workers; 1 for
        a GPU).
    """

    def __init__(self, model, slots):
        self.model = model
        self._slots = slots
        self._lock = threading.Lock()
        self.pending = collections.defaultdict(float)  # device id -> predicted seconds
        self._exploring = set()  # (kernel, bucket, device id) measured by a part in flight
        self.decisions = collections.Counter()  # (kernel, bucket, device id, why) -> calls
        self._placed = collections.Counter()  # (kernel, bucket) -> calls placed
        self._last = {}  # (kernel, bucket, device id) -> _placed's count at its last call

    def place(self, items, candidates_of):
        """Devices for the calls ``items`` (``(kernel, args, kwargs)``, all auto):
        ``([(positions, device, (kernel name, footprint))], ledger)``; the ledger
        (``(device id, kernel name, footprint)`` -> ``(seconds, exploring keys)``) goes
        back to :meth:`settle` when each such part is done.

        ``candidates_of(kernel)`` gives the devices a kernel's calls may use.
        """
        groups = {}
        for position, (function, args, kwargs) in enumerate(items):
            key = (kernel_key(function), footprint(args, kwargs))
            groups.setdefault(key, (function, []))[1].append(position)
        # (all that may raise, before anything is queued)
        candidates_by = {key: candidates_of(function) for key, (function, _) in groups.items()}
        chosen, ledger = [], {}
        with self._lock:
            for (kernel, bucket), (_, positions) in groups.items():
                candidates = candidates_by[(kernel, bucket)]
                device = self._to_explore(kernel, bucket, candidates)
                if device is not None:  # the whole group measures that device
                    self._exploring.add((kernel, bucket, device.id))
                    ledger[(device.id, kernel, bucket)] = (0.0, ((kernel, bucket, device.id),))
                    self.decisions[(kernel, bucket, device.id, CALIBRATING)] += len(positions)
                    chosen.append((positions, device, (kernel, bucket)))
                    continue
                known, per_call = self._predicted(kernel, bucket, candidates)
                why = ONLY_ONE if len(candidates) == 1 else \
                    ONLY_MEASURED if len(known) == 1 else FASTEST
                candidates = known
                stale = self._stale(kernel, bucket, candidates)
                if stale is not None:  # one call measures it again
                    self._exploring.add((kernel, bucket, stale.id))
                    self._note(kernel, bucket, stale, 1)
                    ledger[(stale.id, kernel, bucket)] = (0.0, ((kernel, bucket, stale.id),))
                    self.decisions[(kernel, bucket, stale.id, REMEASURING)] += 1
                    chosen.append((positions[:1], stale, (kernel, bucket)))
                    positions = positions[1:]
                    if not positions:
                        continue
                # A group of little work stays whole: one part, run by one worker (split,
                # each part would pay a dispatch and fuse less; batches in flight spread
                # over the devices). A group of much work is spread call by call.
                whole = len(positions) * min(per_call.values()) < SPLIT_ABOVE
                if whole:
                    device = min(candidates, key=lambda d: self._finish(
                        d, len(positions) * per_call[d.id]))
                    chunks = [(device, positions)]
                else:
                    chunks = self._spread(positions, candidates, per_call)
                for device, chunk in chunks:
                    self._note(kernel, bucket, device, len(chunk))
                    seconds = len(chunk) * per_call[device.id]
                    self.pending[device.id] += seconds
                    spent, marks = ledger.get((device.id, kernel, bucket), (0.0, ()))
                    ledger[(device.id, kernel, bucket)] = (spent + seconds, marks)
                    self.decisions[(kernel, bucket, device.id, why)] += len(chunk)
                    chosen.append((chunk, device, (kernel, bucket)))
        return chosen, ledger

    def _spread(self, positions, candidates, per_call):
        """``[(device, positions)]``: the calls at ``positions`` given one by one to the
        device where each is expected to finish first (a heap, then one contiguous
        chunk per device: the bookkeeping is per device, not per call)."""
        added = [0.0] * len(candidates)
        heap = [(self._finish(d, per_call[d.id]), i) for i, d in enumerate(candidates)]
        heapq.heapify(heap)
        counts = [0] * len(candidates)
        for _ in positions:
            _, i = heapq.heappop(heap)
            device = candidates[i]
            added[i] += per_call[device.id]
            counts[i] += 1
            heapq.heappush(heap, (self._finish(device, per_call[device.id], added[i]), i))
        chunks, start = [], 0
        for device, n in zip(candidates, counts):
            if n:
                chunks.append((device, positions[start:start + n]))
                start += n
        return chunks

    def settle(self, device_id, entry):
        """A part that queued ``entry`` (from :meth:`place`'s ledger) on ``device_id`` is
        done."""
        seconds, marks = entry
        with self._lock:
            self.pending[device_id] = max(self.pending[device_id] - seconds, 0.0)
            self._exploring.difference_update(marks)

    def _note(self, kernel, bucket, device, n_calls):
        """``n_calls`` of the kernel and footprint placed, on ``device``."""
        placed = self._placed[(kernel, bucket)] = self._placed[(kernel, bucket)] + n_calls
        self._last[(kernel, bucket, device.id)] = placed

    def _stale(self, kernel, bucket, candidates):
        """A measured device that got none of the last :data:`REMEASURE_EVERY` calls of
        the kernel and footprint (and has no measuring part in flight), or None."""
        if len(candidates) < 2:
            return None
        placed = self._placed[(kernel, bucket)]
        for device in candidates:
            last = self._last.setdefault((kernel, bucket, device.id), placed)
            if (placed - last >= REMEASURE_EVERY
                    and (kernel, bucket, device.id) not in self._exploring):
                return device
        return None

    def _to_explore(self, kernel, bucket, candidates):
        """An uncalibrated device with no measuring part in flight, or None."""
        if len(candidates) < 2:
            return None
        for device in sorted(candidates, key=lambda d: self.model.samples(
                kernel, device_model(d), bucket)):
            if (kernel, bucket, device.id) in self._exploring:
                continue
            _, how = self.model.predict(kernel, device_model(device), bucket)
            if how not in ("measured", "regression"):
                return device
        return None

    def _predicted(self, kernel, bucket, candidates):
        """``(devices, {device id: seconds per call})`` to choose among: the candidates
        with a prediction (one not yet measured gets calls by calibration only: taken
        as free, it drew every call of its kernel while its first part ran), or all of
        them at 0 s when none has one (the queues decide)."""
        per_call = {d.id: self.model.predict(kernel, device_model(d), bucket)[0]
                    for d in candidates}
        known = [d for d in candidates if per_call[d.id] is not None]
        if not known:
            return candidates, dict.fromkeys(per_call, 0.0)
        return known, {d.id: per_call[d.id] for d in known}

    def _finish(self, device, seconds, queued=0.0):
        """When a part of ``seconds`` would finish on ``device``: after the work queued
        there (and ``queued`` seconds more; shared by its parallel workers), run by one
        of them."""
        return (self.pending[device.id] + queued) / max(self._slots(device), 1) + seconds

    def decisions_now(self):
        """A copy of :attr:`decisions` (for :meth:`explain`'s ``since``)."""
        with self._lock:
            return collections.Counter(self.decisions)

    def calls_per_device(self):
        """``{device id: {"auto_calls": n, "calibrating_calls": m}}``: calls placed
        there, and how many of those were sent to measure it."""
        out = {}
        with self._lock:
            decisions = list(self.decisions.items())
        for (_, _, device_id, why), calls in decisions:
            row = out.setdefault(device_id, {"auto_calls": 0, "calibrating_calls": 0})
            row["auto_calls"] += calls
            if why == CALIBRATING:
                row["calibrating_calls"] += calls
        return out

    def explain(self, since=None):
        """Per kernel and footprint: the prediction on each device model (seconds per
        call, samples, how) and where calls went, and why; only the calls placed after
        ``since`` (an earlier copy of :attr:`decisions`) if given."""
        with self._lock:
            decisions = self.decisions - since if since is not None else self.decisions
            decisions = sorted(decisions.items())
        with self.model._lock:
            histories = list(self.model.histories)
        lines, seen = [], sorted({(k, b) for (k, b, _, _), _ in decisions})
        for kernel, bucket in seen:
            lines.append(f"{kernel}, size ~{format_bytes(int(bucket_size(bucket)))}:")
            models = {m for (k, m) in histories if k == kernel}
            for model in sorted(models):
                seconds, how = self.model.predict(kernel, model, bucket)
                lines.append(f"  {model}: {format_per_call(seconds)} ({how}, "
                             f"{self.model.samples(kernel, model, bucket)} samples)")
            for (k, b, device_id, why), calls in decisions:
                if (k, b) == (kernel, bucket):
                    lines.append(f"  -> {device_id}: {calls} call{'s' * (calls != 1)} "
                                 f"({why})")
        return "\n".join(lines)


def format_per_call(seconds):
    """A predicted time per call as ``explain()`` and ``devicejoblib model show`` show
    it."""
    return "no estimate" if seconds is None else f"{seconds * 1e6:.1f} us/call"


def auto_kernel(function, backend_auto):
    """Whether calls of ``function`` are placed by the cost model: a kernel pinned
    ``"auto"``, or one not pinned under a backend placing ``"auto"``."""
    if type(function) is not Kernel:
        return False
    pin = function.pin
    return pin.auto or (backend_auto and pin.anywhere)
