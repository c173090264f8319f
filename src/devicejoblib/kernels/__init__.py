"""Reference workloads: kernels with CPU, GPU and batched implementations.

Importable from an installed devicejoblib (``from devicejoblib.kernels import saxpy``);
the top-level ``kernels/`` folder of the repository points here.

- :mod:`.elementwise`: SAXPY and a sum of squares, the smallest calls, where dispatch
  overhead dominates.
- :mod:`.maps`: iterating the logistic map, Python-level work per call whose batched
  form vectorises across calls.
"""

from .elementwise import saxpy, sum_of_squares
from .maps import logistic_map

__all__ = ["logistic_map", "saxpy", "sum_of_squares"]
