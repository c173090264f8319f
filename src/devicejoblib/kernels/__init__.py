"""Reference workloads: kernels with CPU, GPU and batched implementations.

Importable from an installed devicejoblib (``from devicejoblib.kernels import saxpy``);
the top-level ``kernels/`` folder of the repository points here.

- :mod:`.elementwise`: SAXPY and a sum of squares, the smallest calls, where dispatch
  overhead dominates.
- :mod:`.maps`: iterating the logistic map, Python-level work per call whose batched
  form vectorises across calls.
- :mod:`.bandit`: multi-armed bandit Monte-Carlo (UCB1, Thompson sampling).
- :mod:`.mlp`: batched MLP inference with weights resident on each device.
- :mod:`.numba_saxpy`: SAXPY as a Numba CUDA kernel.
"""

from . import bandit, mlp, numba_saxpy
from .elementwise import saxpy, sum_of_squares
from .maps import logistic_map

__all__ = ["bandit", "logistic_map", "mlp", "numba_saxpy", "saxpy", "sum_of_squares"]
