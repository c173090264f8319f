"""Batch sizes: one policy per backend, with a launch sizer per GPU.

joblib has one batch size per ``Parallel`` call, tuned for loky processes (batches of
0.2 to 2 s). A GPU wants batches big enough to amortise its launch and synchronisation
overhead — and, with fused launches, as many calls per launch as fit — but small enough
to fit its free memory. Each GPU therefore has its own :class:`GPUBatchSizer`; the
:class:`BatchPolicy` holds them, the user's ``batch_size`` and ``max_batch_size``, the
size handed to joblib while calls go to GPUs, and joblib's auto batching for the CPU.
"""

from __future__ import annotations

import math
import threading
import time

from .._joblib_adapters import cpu_auto_batching
from .._kernels import Kernel
from .._utils import check_count

#: Growth stops when doubling the batch no longer cuts the time per call by this factor.
PLATEAU = 0.9
#: While growing, the launch size aims at launches whose fixed overhead is at most this
#: share of their time, by the overhead and time per call fitted to the last two sizes.
OVERHEAD_SHARE = 0.1
#: The most the launch size grows in one step (the fit comes from smaller launches).
MAX_GROWTH = 16
#: Fraction of a GPU's free memory one batch's arguments and results may use.
MEMORY_FRACTION = 0.5
MIN_START = 8
#: Calls whose arguments estimate the bytes per call before a launch was measured.
ESTIMATED_FROM = 8
#: Full batches measured at a size before deciding whether doubling paid (the best
#: counts: one slow sample, e.g. another thread holding the GIL, must not stop growth).
SAMPLES = 2


class BatchPolicy:
    """The batch sizes of one backend.

    Parameters
    ----------
    max_batch_size : int, optional
        Upper bound for every automatic size (CPU batches, launches, dispatch).
    nesting_level : int, optional
        The backend's, for joblib's CPU auto batching.

    learnt : callable, optional
        ``learnt(device, kernel names)``: a launch size settled on in an earlier
        process, or None (the persisted cost model), handed to each launch sizer.
    """

    def __init__(self, max_batch_size=None, nesting_level=None, learnt=None):
        self.max_batch_size = check_count("max_batch_size", max_batch_size, allow_none=True)
        self.fixed = None  # the user's batch_size=<int>, which wins over everything
        self.learnt = learnt
        self.gpu_bound = False  # whether the last batch went to GPUs only
        self.launch_sizers = {}  # device id -> GPUBatchSizer
        self.dispatch = DispatchBatchSizer(self.max_batch_size)
        self.cluster = ClusterBatchSizer(self.max_batch_size)
        self.cpu = cpu_auto_batching(nesting_level)

    def launch_sizer(self, device):
        """The launch sizer of ``device`` (made on first use)."""
        if device.id not in self.launch_sizers:
            self.launch_sizers[device.id] = GPUBatchSizer(device, self.max_batch_size,
                                                          self.learnt)
        return self.launch_sizers[device.id]

    def start_call(self, parallel):
        """A ``Parallel`` call starts: its fixed ``batch_size``, if any, applies (to the
        launch sizers too)."""
        fixed = getattr(parallel, "batch_size", "auto")
        self.fixed = fixed if isinstance(fixed, int) else None
        for sizer in self.launch_sizers.values():
            sizer.fixed = self.fixed
        self.cpu.parallel = parallel

    def end_call(self):
        """The call ended: forget its CPU and dispatch measurements (GPU sizers keep
        what they learnt, and the call's fixed size until the next call: the report
        shows it)."""
        self.cpu.reset_batch_stats()
        self.cpu.parallel = None
        self.dispatch.reset()
        self.gpu_bound = False

    def cap(self, size):
        return size if self.max_batch_size is None else min(size, self.max_batch_size)

    def compute_batch_size(self):
        """joblib's batch size: the GPUs' while calls go to GPUs only, else joblib's
        auto policy for loky (fed with the CPU parts' durations only)."""
        if self.gpu_bound and self.cluster.measured:
            return self.cap(self.cluster.size)
        if self.gpu_bound and self.launch_sizers:
            return self.dispatch.compute(min(s.size for s in self.launch_sizers.values()))
        return self.cap(self.cpu.compute_batch_size())

    def cpu_batch_completed(self, n_calls, seconds, whole=None):
        """A CPU part of ``n_calls`` took ``seconds``: joblib's auto batching learns the
        time its whole batch (``whole`` calls) would have taken at that rate (it ignores
        a batch of any other size than the one it chose)."""
        whole = whole or n_calls
        self.cpu.batch_completed(whole, seconds * whole / max(n_calls, 1))

    def cluster_part_completed(self, gpu, n_calls, round_trip, seconds, whole=None):
        """A part of ``n_calls`` (of a joblib batch of ``whole``) ran on a Dask worker:
        ``seconds`` there, ``round_trip`` from submission to result here."""
        if gpu:
            self.cluster.completed(n_calls, round_trip, seconds)
        else:  # joblib's auto batching, as with its dask backend
            self.cpu_batch_completed(n_calls, round_trip, whole)


class GPUBatchSizer:
    """The batch size of one GPU, and the measurements it is chosen from.

    Policy: start from the device's multiprocessor count (at least 8 calls); after
    ``SAMPLES`` full batches at a size, grow it while the time per call keeps falling
    by 10 % or more (launch and synchronisation overhead being amortised): double it
    first, then jump to where a fitted fixed overhead is ``OVERHEAD_SHARE`` of a launch
    (2 to ``MAX_GROWTH`` times); then keep the best size seen.
    Never exceed ``MEMORY_FRACTION`` of the device's free memory, estimated from the
    bytes each call moves; halve the size on out-of-memory. A fixed size (the user's
    ``batch_size=<int>``) wins over all of this; ``max_batch_size`` caps it.

    Parameters
    ----------
    device : Device
    cap : int, optional
        ``max_batch_size``: the most calls a launch may hold.
    learnt : callable, optional
        ``learnt(device, kernel names)``: the launch size an earlier process settled
        on, or None.

    Attributes
    ----------
    fixed : int or None
        The current ``Parallel`` call's ``batch_size=<int>`` (set when a call starts).
    """

    def __init__(self, device, cap=None, learnt=None):
        self.device = device
        self.cap = cap
        self.learnt = learnt
        self.fixed = None
        self.bytes_per_call = 0
        self._expected_bytes = 0  # estimated from arguments until a launch is measured
        self.kernels = set()  # names of the kernels fused here
        self._ceiling = None  # set by an out-of-memory error
        self._lock = threading.Lock()
        self.reset()

    def reset(self):
        """Forget the measurements (a new ``Parallel`` call may run other kernels)."""
        self._size = max(MIN_START, self.device.multiprocessor_count or 0)
        self._per_call = {}  # size -> best seconds per call seen at that size
        self._samples = {}  # size -> full batches measured at that size
        self._previous_size = None
        self.settled = False
        self.capped = False  # settled because a cap (max_batch_size, memory) held it
        # the kernels fused while the size settled here (not loaded): persisted
        self.settled_for = frozenset()

    @property
    def size(self):
        """The number of calls the next batch should hold."""
        if self.fixed is not None:  # the user's, unless it did not fit in memory
            return min(self.fixed, self._ceiling or self.fixed)
        size = self._size
        for cap in (self.cap, self._ceiling, self.memory_cap()):
            if cap is not None:
                size = min(size, cap)
        return max(size, 1)

    def memory_cap(self):
        """Calls whose bytes fit ``MEMORY_FRACTION`` of free memory, or None if unknown."""
        free = self.device.memory_free
        per_call = self.bytes_per_call or self._expected_bytes
        if not per_call or not free:
            return None
        return max(int(MEMORY_FRACTION * free // per_call), 1)

    def expect(self, calls):
        """Before a launch was measured, estimate each call's bytes from the arrays among
        the first ``calls``' arguments (results taken as large), so that the memory cap
        holds from the first launch; a kernel fused here for the first time starts at the
        launch size an earlier process settled on, if any."""
        first = calls[0][0] if calls else None
        if type(first) is not Kernel or first.batched_form(self.device.platform.runs) is None:
            return  # nothing to fuse: launches are single calls, whatever the size
        if first.resident_key not in self.kernels:
            self.kernels.add(first.resident_key)  # a kernel fused here: size persisted
            self._start_from_learnt()
        if self.bytes_per_call:
            return
        for _, args, kwargs in calls[:ESTIMATED_FROM]:
            moved = sum(getattr(v, "nbytes", 0) for v in (*args, *kwargs.values()))
            self._expected_bytes = max(self._expected_bytes, 2 * moved)

    def _start_from_learnt(self):
        """Before any launch was measured here: start at the size an earlier process
        settled on for these kernels on this device model. It is checked as any size
        is, by trying twice as many: an earlier process may have been held there by a
        cap of its own (``max_batch_size``, memory) or a noisy moment, and taken on
        trust such a size would stay for good."""
        if self._per_call or self.settled or self.learnt is None:
            return
        size = self.learnt(self.device, self.kernels)
        if size:
            self._size = size

    def note_bytes(self, bytes_per_call):
        """The most bytes a call moved so far (stacked arguments and results)."""
        self.bytes_per_call = max(self.bytes_per_call, bytes_per_call)

    def measures(self, n_calls):
        """Whether a batch of ``n_calls`` would tell :meth:`record` anything (worth
        timing)."""
        return self.fixed is None and not self.settled and n_calls >= self.size

    def record(self, n_calls, seconds):
        """Account for a batch of ``n_calls`` that took ``seconds`` on the device."""
        if self.fixed is not None or self.settled:
            return
        with self._lock:
            if n_calls < self.size:
                return  # only full batches say anything about the current size
            size = self.size
            best = self._per_call.get(size, float("inf"))
            self._per_call[size] = min(best, seconds / n_calls)
            self._samples[size] = self._samples.get(size, 0) + 1
            if self._samples[size] < SAMPLES:
                return
            previous = self._per_call.get(self._previous_size)
            gain = None if not previous else self._per_call[size] / previous  # (0: no clock tick)
            if gain is not None and gain > PLATEAU:
                self._size = min(self._per_call, key=self._per_call.get)
                self.settled, self.capped = True, False
                self.settled_for = frozenset(self.kernels)
            else:
                growth = self._growth(self._previous_size, size)
                self._previous_size = size
                self._size = size * growth
                self.settled = self.capped = self.size == size  # a cap holds it here
                self.settled_for = frozenset(self.kernels) if self.settled else frozenset()

    def _growth(self, previous, size):
        """How many times larger the next launch size is: 2 without an earlier size;
        else, fitting ``seconds = overhead + n * per_call`` to the two sizes, enough for
        the overhead to be ``OVERHEAD_SHARE`` of a launch (a power of two from 2 to
        ``MAX_GROWTH``: a launch cost of 60 ms, as a real GPU's logistic-map launches
        had, no longer takes 2 launches at each of 6 sizes to amortise)."""
        if previous is None:
            return 2
        t_previous, t_size = (self._per_call[n] * n for n in (previous, size))
        per_call = (t_size - t_previous) / (size - previous)
        overhead = t_previous - per_call * previous
        if per_call <= 0:
            return MAX_GROWTH
        wanted = overhead * (1 - OVERHEAD_SHARE) / OVERHEAD_SHARE / per_call
        return min(max(2, 2 ** round(math.log2(max(wanted / size, 1)))), MAX_GROWTH)

    def out_of_memory(self, n_calls):
        """A batch of ``n_calls`` did not fit: never try that many again."""
        with self._lock:
            self._ceiling = max(n_calls // 2, 1)
            self._size = min(self._size, self._ceiling)

    def describe(self):
        """The state, for the dispatch report."""
        how = ("fixed" if self.fixed is not None else "settled" if self.settled
               else "growing")
        return {"batch_size": self.size, "batch_policy": how,
                "per_call_seconds": dict(sorted(self._per_call.items()))}


class DispatchBatchSizer:
    """joblib's batch size while calls go to GPUs: how many calls joblib hands over at
    once, so that its per-batch cost (~50-100 us of Python in the caller) is amortised.

    Doubles while a batch takes less than ``target`` seconds from dispatch to completion
    and halves above ten times that; starts from the GPUs' own batch size. Separate from
    :class:`GPUBatchSizer`, which sizes launches: a GPU worker splits a big joblib batch
    into launches of its own size, and takes several small ones together.
    """

    target = 0.05

    def __init__(self, cap=None):
        self.cap = cap  # max_batch_size
        self.reset()

    def reset(self):
        self.size = None

    def compute(self, gpu_size):
        """The batch size to hand joblib, given the GPUs' current launch size."""
        size = max(self.size or 0, gpu_size)
        return size if self.cap is None else min(size, self.cap)

    def timing(self, n_calls, callback):
        """``callback`` (may be None), preceded by telling this sizer how long the
        GPU-bound batch of ``n_calls`` dispatched now took."""
        started = time.perf_counter()

        def timed(future):
            self.completed(n_calls, time.perf_counter() - started)
            if callback is not None:
                callback(future)

        return timed

    def completed(self, n_calls, seconds):
        """A GPU-bound batch of ``n_calls`` took ``seconds`` from dispatch to completion."""
        size = self.size or n_calls
        if n_calls < size:
            return
        if seconds < self.target:
            self.size = n_calls * 2
        elif seconds > 10 * self.target:
            self.size = max(n_calls // 2, 1)


class ClusterBatchSizer:
    """joblib's batch size while calls go to a Dask cluster's GPU workers.

    A Dask task costs about a millisecond of scheduling and transfer (less on one
    machine), whatever it computes: measured here as each part's round trip less the
    time its worker spent on it (the least seen: queueing behind other parts is not a
    cost). The size is scaled so that a part computes ``AMORTISE`` times that cost, by
    at most 4x up or 2x down per measured part, capped by ``max_batch_size``.
    """

    AMORTISE = 20

    def __init__(self, cap=None):
        self.cap = cap  # max_batch_size
        self.size = MIN_START
        self.overhead = None  # seconds per Dask task, the least measured
        self.measured = False
        self._lock = threading.Lock()

    def completed(self, n_calls, round_trip, seconds):
        """A GPU part of ``n_calls`` took ``seconds`` on its worker, ``round_trip``
        from submission to result."""
        with self._lock:
            overhead = max(round_trip - seconds, 1e-6)
            self.overhead = overhead if self.overhead is None else min(self.overhead,
                                                                       overhead)
            self.measured = True
            if n_calls < self.size:
                return  # the tail of a call: says little about the size
            wanted = self.AMORTISE * self.overhead
            scale = min(max(wanted / max(seconds, 1e-9), 0.5), 4.0)
            size = max(int(n_calls * scale), 1)
            self.size = size if self.cap is None else min(size, self.cap)
