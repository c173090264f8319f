"""Executors run the parts of joblib batches that routing made and complete their
futures: the GPU pool (a worker thread per GPU), a CPU pool per CPU route (loky
processes or threads), and the Dask client (a Dask task per part).

They share one small interface, :class:`Executor`, and are handed values and
callables: none of them imports a decision (routing, placement, batch sizes).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass
class ExecutorStats:
    """What one route or worker ran: calls, batches (parts) and busy seconds."""

    calls: int = 0
    batches: int = 0
    seconds: float = 0.0

    def add(self, calls, seconds):
        self.calls += calls
        self.batches += 1
        self.seconds += seconds

    def row(self):
        """The report row: ``{"calls", "batches", "seconds"}``."""
        return {"calls": self.calls, "batches": self.batches, "seconds": self.seconds}


class Executor(abc.ABC):
    """Runs parts of joblib batches somewhere.

    ``submit`` hands over a part and returns a :class:`concurrent.futures.Future` of its
    results (a list, in call order), completed with the part's first error otherwise;
    ``on_done(future)`` is called once, when it is done, then dropped.
    """

    @abc.abstractmethod
    def submit(self, target, batch, on_done=None, whole=None):
        """Run the part ``batch`` (of a joblib batch of ``whole`` calls) for ``target``."""

    def abort(self, patience=None):
        """Cancel what has not started; leave what runs to finish on its own (given
        ``patience``, the seconds after which a call still running never returns)."""

    def shutdown(self, wait=True):
        """Stop the workers (after what they run, waiting unless ``wait=False``)."""

    def stats(self):
        """``{device or route: report row}`` of what ran here."""
        return {}
