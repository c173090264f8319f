"""The GPU worker thread on its own: taking queued batches together, cancelling."""

import threading
from concurrent.futures import wait

from devicejoblib import Device
from devicejoblib.executors.gpu import GPUWorker
from devicejoblib.policy.batching import GPUBatchSizer
from devicejoblib.run.fusion import Ran

DEVICE = Device("simulator", 0, multiprocessor_count=2)


class Task:
    def __init__(self, name, n_calls=2, fusable=True, config="same"):
        self.name, self.n_calls, self.fusable, self.config = name, n_calls, fusable, config


def worker_with_gate():
    """A worker whose first execution waits on a gate, so that tasks queue up behind it."""
    entered, gate, groups = threading.Event(), threading.Event(), []

    def execute(tasks, should_stop=None):
        groups.append([t.name for t in tasks])
        if len(groups) == 1:
            entered.set()
            gate.wait(10)
        return Ran([t.name for t in tasks])

    return GPUWorker(DEVICE, execute, GPUBatchSizer(DEVICE)), entered, gate, groups


def run(tasks, after_first=None):
    worker, entered, gate, groups = worker_with_gate()
    futures = {tasks[0].name: worker.submit(tasks[0])}
    assert entered.wait(10)  # the first batch runs: the others queue behind it
    futures.update((task.name, worker.submit(task)) for task in tasks[1:])
    if after_first:
        after_first(worker)
    gate.set()
    assert not wait(futures.values(), timeout=10).not_done
    worker.stop()
    return groups, futures, worker


def test_queued_fusable_batches_run_together_up_to_the_batch_size():
    groups, futures, _ = run([Task(i) for i in range(7)])  # 2 calls each, size 8
    assert groups == [[0], [1, 2, 3, 4], [5, 6]]
    assert {name: f.result() for name, f in futures.items()} == {i: i for i in range(7)}


def test_unfusable_or_other_config_batches_run_alone():
    tasks = [Task("a"), Task("b"), Task("c", fusable=False), Task("d"),
             Task("e", config="other")]
    groups, _, _ = run(tasks)
    assert groups == [["a"], ["b"], ["c"], ["d"], ["e"]]


def test_cancel_drops_every_batch_not_started_and_reports_only_what_ran():
    groups, futures, worker = run([Task(i) for i in range(4)],
                                  after_first=lambda w: w.cancel_pending())
    assert groups == [[0]]
    assert futures[0].result() == 0
    assert all(futures[i].cancelled() for i in (1, 2, 3))
    assert worker.calls == 2 and worker.pending_calls == 0


def test_a_failed_binding_breaks_every_task_with_the_device_named(monkeypatch):
    from concurrent.futures import BrokenExecutor

    def broken(device):
        raise OSError("no context")

    monkeypatch.setattr(DEVICE.platform, "bind", broken)
    worker = GPUWorker(DEVICE, lambda tasks, _: Ran([t.name for t in tasks]),
                       GPUBatchSizer(DEVICE))
    futures = [worker.submit(Task(i)) for i in range(3)]
    assert not wait(futures, timeout=10).not_done
    worker.stop()
    for future in futures:
        error = future.exception()
        assert isinstance(error, BrokenExecutor) and "cuda:0 (simulated)" in str(error)
        assert isinstance(error.__cause__, OSError)


def test_a_completion_callback_that_raises_is_reported_and_the_worker_goes_on():
    worker = GPUWorker(DEVICE, lambda tasks, should_stop=None: Ran([t.name for t in tasks]),
                       GPUBatchSizer(DEVICE))
    reported, done = [], []
    previous, threading.excepthook = threading.excepthook, reported.append
    try:
        first = worker.submit(Task("a"), on_done=lambda f: 1 / 0)
        second = worker.submit(Task("b"), on_done=done.append)
        assert second.result(timeout=10) == "b" and done == [second]
    finally:
        threading.excepthook = previous
        worker.stop()
    assert first.result() == "a"
    assert [type(r.exc_value) for r in reported] == [ZeroDivisionError]
