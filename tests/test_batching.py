"""The batch-size policies on their own, without workers."""

from types import SimpleNamespace

import pytest

from devicejoblib import Device
from devicejoblib.policy.batching import (
    MEMORY_FRACTION,
    MIN_START,
    SAMPLES,
    BatchPolicy,
    DispatchBatchSizer,
    GPUBatchSizer,
)


def gpu(sms=4, free=2**30):
    return Device("simulator", 0, multiprocessor_count=sms, memory_total=free,
                  memory_free=free)


def feed(sizer, per_call):
    """Record full batches at the current size (as many as the policy wants before it
    decides) with ``per_call(size)`` seconds per call; the size they were recorded at."""
    size = sizer.size
    for _ in range(SAMPLES):
        sizer.record(size, per_call(size) * size)
    return size


@pytest.mark.parametrize("sms, start", [(None, MIN_START), (4, MIN_START), (132, 132)])
def test_starts_from_the_multiprocessor_count(sms, start):
    assert GPUBatchSizer(gpu(sms)).size == start


def test_grows_while_time_per_call_falls_then_keeps_the_best():
    sizer = GPUBatchSizer(gpu())
    # launch overhead of 1 ms amortised over the batch, plus 10 us of work per call:
    # doubling stops paying (< 10 % better) once the overhead per call is small
    sizes = [feed(sizer, lambda n: 1e-3 / n + 1e-5) for _ in range(12)]
    # 8 -> 16 (no gain known yet); the fit of 1 ms + 10 us a call to 8 and 16 wants
    # 900 calls for the overhead to be a tenth: x16 (the most), then x4 (256 -> 1024, the
    # power of two nearest 900/256); then x2 while the time per call falls by 10 % or
    # more, then the best size
    assert sizes[:5] == [8, 16, 256, 1024, 2048]
    assert sizer.settled
    best = min(sizer.describe()["per_call_seconds"].items(), key=lambda kv: kv[1])[0]
    assert sizer.size == best == 2048


def test_flat_time_per_call_settles_at_once():
    sizer = GPUBatchSizer(gpu())
    feed(sizer, lambda n: 1e-5)
    feed(sizer, lambda n: 1e-5)
    assert sizer.settled and sizer.size == MIN_START


def test_one_slow_sample_does_not_stop_growth():
    sizer = GPUBatchSizer(gpu())
    feed(sizer, lambda n: 1e-3 / n)
    sizer.record(16, 1.0)  # another thread held the GIL
    sizer.record(16, 1e-3)
    assert not sizer.settled and sizer.size == 256  # all overhead: x16, the most


def test_a_launch_cost_of_60_ms_is_amortised_in_few_launches():
    # as a real GPU's logistic-map launches (H200): 60 ms each, 1 us of work a call
    sizer = GPUBatchSizer(gpu(sms=132))
    sizes = [feed(sizer, lambda n: 60e-3 / n + 1e-6) for _ in range(4)]
    assert sizes == [132, 264, 4224, 67584]  # x2 (nothing to fit yet), then x16, x16


def test_launches_too_quick_for_the_clock_do_not_break_the_sizer():
    sizer = GPUBatchSizer(gpu())
    feed(sizer, lambda n: 0.0)  # a coarse clock read no time at all
    feed(sizer, lambda n: 1e-3 / n)
    assert sizer.size > 16 and not sizer.settled


def test_partial_batches_say_nothing():
    sizer = GPUBatchSizer(gpu())
    sizer.record(3, 1.0)
    assert sizer.size == MIN_START and not sizer.describe()["per_call_seconds"]


def test_memory_budget_caps_the_size():
    sizer = GPUBatchSizer(gpu(free=2**20))
    sizer.note_bytes(2**16)
    sizer.record(1, 1e-3)
    assert sizer.memory_cap() == int(MEMORY_FRACTION * 2**20 // 2**16) == 8
    for _ in range(5):
        feed(sizer, lambda n: 1e-3 / n)
    assert sizer.size == 8 and sizer.settled


def test_out_of_memory_halves_and_sets_a_ceiling():
    sizer = GPUBatchSizer(gpu())
    for _ in range(4):
        feed(sizer, lambda n: 1e-3 / n)
    sizer.out_of_memory(64)
    assert sizer.size == 32
    sizer.settled = False
    feed(sizer, lambda n: 1e-3 / n)
    assert sizer.size <= 32


def test_fixed_size_wins_and_max_caps():
    policy = BatchPolicy(max_batch_size=20)
    sizer = policy.launch_sizer(gpu())
    for _ in range(4):
        feed(sizer, lambda n: 1e-3 / n)
    assert sizer.size == 20 and sizer.settled  # held at the cap
    policy.start_call(SimpleNamespace(batch_size=100))
    assert sizer.size == 100 and sizer.describe()["batch_policy"] == "fixed"


def test_one_policy_holds_the_limits_of_every_size():
    policy = BatchPolicy(max_batch_size=5)
    sizers = [policy.launch_sizer(gpu()), policy.launch_sizer(gpu(sms=64))]
    assert policy.launch_sizer(gpu()) is sizers[0]  # one sizer per device id
    assert sizers[0].size == 5 and policy.dispatch.compute(64) == 5
    assert policy.compute_batch_size() <= 5  # the CPU's auto batching too


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True])
def test_bad_max_batch_size_is_named(bad):
    with pytest.raises(ValueError, match=rf"Invalid max_batch_size={bad!r}: expected a "
                       "positive integer or None"):
        BatchPolicy(max_batch_size=bad)


def test_dispatch_sizer_doubles_below_target_halves_far_above():
    sizer = DispatchBatchSizer()
    assert sizer.compute(gpu_size=8) == 8
    sizer.completed(8, 0.001)
    assert sizer.compute(8) == 16
    sizer.completed(16, 0.001)
    assert sizer.compute(8) == 32
    sizer.completed(32, 10 * DispatchBatchSizer.target + 1)
    assert sizer.compute(8) == 16
    assert DispatchBatchSizer(cap=10).compute(64) == 10


def test_a_fixed_size_that_ran_out_of_memory_is_capped():
    policy = BatchPolicy()
    sizer = policy.launch_sizer(gpu())
    policy.start_call(SimpleNamespace(batch_size=64))
    sizer.out_of_memory(64)
    assert sizer.size == 32


def test_cluster_parts_grow_until_they_amortise_the_per_task_cost():
    policy = BatchPolicy()
    policy.gpu_bound = True  # calls go to a cluster's GPU workers
    per_call, overhead = 1e-4, 1e-3  # 0.1 ms of work per call, 1 ms per Dask task
    sizes = []
    for _ in range(8):
        n = policy.compute_batch_size() if sizes else 8
        policy.cluster_part_completed(True, n, overhead + n * per_call, n * per_call)
        sizes.append(policy.compute_batch_size())
    wanted = policy.cluster.AMORTISE * overhead / per_call  # 200 calls
    assert sizes[0] == 32  # at most 4x per part
    assert wanted / 2 <= sizes[-1] <= wanted * 2
    # calls become 10x slower: parts shrink, by at most half per part
    for _ in range(8):
        n = policy.compute_batch_size()
        policy.cluster_part_completed(True, n, overhead + n * 1e-3, n * 1e-3)
    assert wanted / 20 <= policy.compute_batch_size() <= wanted / 5


def test_cluster_cpu_parts_feed_joblibs_auto_batching():
    from joblib import Parallel

    policy = BatchPolicy()
    policy.start_call(Parallel(n_jobs=2))
    before = policy.compute_batch_size()
    for _ in range(4):  # parts of 1 call taking 1 ms: far below joblib's 0.2 s target
        policy.cluster_part_completed(False, policy.compute_batch_size(), 1e-3, 5e-4)
    assert policy.compute_batch_size() > before
