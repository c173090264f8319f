"""Reference workloads: kernels with CPU, GPU and batched implementations.

Importable as ``devicejoblib.kernels`` only (``from devicejoblib.kernels import saxpy``).
The files live in the repository's top-level ``kernels/`` folder; the wheel installs them
as ``devicejoblib/kernels/`` (pyproject.toml's ``package-dir``), and a checkout reaches
them through the small ``src/devicejoblib/kernels/__init__.py`` that points here.

- :mod:`.elementwise`: SAXPY and a sum of squares, the smallest calls, where dispatch
  overhead dominates.
- :mod:`.maps`: iterating the logistic map, Python-level work per call whose batched
  form vectorises across calls.
- :mod:`.bandit`: multi-armed bandit Monte-Carlo (UCB1, Thompson sampling).
- :mod:`.mlp`: batched MLP inference with weights resident on each device.
- :mod:`.classifier`: batch image classification with a PyTorch network resident on
  each device (needs PyTorch when called).
- :mod:`.numba_saxpy`: SAXPY as a Numba CUDA kernel.
"""

if __name__ != "devicejoblib.kernels":
    # Under a second name every module here would exist twice: two copies of resident
    # state (mlp.SETUPS), and kernels that pickle by a module name loky workers resolve
    # to the other copy.
    raise ImportError(
        f"The repository's kernels/ folder was imported as {__name__!r}: import it as "
        "'devicejoblib.kernels' (from devicejoblib.kernels import mlp). It is devicejoblib's "
        "kernels subpackage, and a module imported under two names exists twice, with "
        "separate state and kernels pickled under the wrong name."
    )

from . import bandit, classifier, mlp, numba_saxpy
from .elementwise import saxpy, sum_of_squares
from .maps import logistic_map

__all__ = ["bandit", "classifier", "logistic_map", "mlp", "numba_saxpy", "saxpy",
           "sum_of_squares"]
