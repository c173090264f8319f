"""The GPU worker thread on its own: taking queued batches together, cancelling."""

import threading
from concurrent.futures import CancelledError

from devicejoblib import Device
from devicejoblib._batching import GPUBatchSizer
from devicejoblib._workers import GPUWorker

DEVICE = Device("cuda", 0, simulated=True, provider="simulator", multiprocessor_count=2)


class Task:
    def __init__(self, name, n_calls=2, fusable=True, config="same"):
        self.name, self.n_calls, self.fusable, self.config = name, n_calls, fusable, config


def worker_with_gate():
    """A worker whose first execution waits on a gate, so that tasks queue up behind it."""
    entered, gate, groups = threading.Event(), threading.Event(), []

    def execute(tasks):
        groups.append([t.name for t in tasks])
        if len(groups) == 1:
            entered.set()
            gate.wait(10)
        return [(t.name, None) for t in tasks], 0, []

    return GPUWorker(DEVICE, execute, GPUBatchSizer(DEVICE)), entered, gate, groups


def run(tasks, after_first=None):
    worker, entered, gate, groups = worker_with_gate()
    results, finished = {}, threading.Event()

    def done_for(name):
        def done(result, error):
            results[name] = error or result
            if len(results) == len(tasks):
                finished.set()
        return done

    worker.submit(tasks[0], done_for(tasks[0].name))
    assert entered.wait(10)  # the first batch runs: the others queue behind it
    for task in tasks[1:]:
        worker.submit(task, done_for(task.name))
    if after_first:
        after_first(worker)
    gate.set()
    assert finished.wait(10)
    worker.stop()
    return groups, results, worker


def test_queued_fusable_batches_run_together_up_to_the_batch_size():
    groups, results, _ = run([Task(i) for i in range(7)])  # 2 calls each, size 8
    assert groups == [[0], [1, 2, 3, 4], [5, 6]]
    assert results == {i: i for i in range(7)}


def test_unfusable_or_other_config_batches_run_alone():
    tasks = [Task("a"), Task("b"), Task("c", fusable=False), Task("d"),
             Task("e", config="other")]
    groups, _, _ = run(tasks)
    assert groups == [["a"], ["b"], ["c"], ["d"], ["e"]]


def test_cancel_drops_every_batch_not_started_and_reports_only_what_ran():
    groups, results, worker = run([Task(i) for i in range(4)],
                                  after_first=lambda w: w.cancel_pending())
    assert groups == [[0]]
    assert results[0] == 0
    assert all(isinstance(results[i], CancelledError) for i in (1, 2, 3))
    assert worker.calls == 2 and worker.pending_calls == 0
