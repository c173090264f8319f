"""NumPy: host arrays, the library of CPU implementations and of simulated GPUs."""

from __future__ import annotations

from .base import ArrayLibrary


class NumPyLibrary(ArrayLibrary):
    """Host arrays: nothing to move, bind or free."""

    name = package = "numpy"
    serves = ("cpu",)
