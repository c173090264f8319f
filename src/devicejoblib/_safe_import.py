"""The safe import: joblib's ``Parallel`` and friends when joblib is importable,
sequential stand-ins with the same signatures when it is not."""

from __future__ import annotations

try:
    from joblib import Parallel, cpu_count, delayed, parallel_config
except ImportError:  # joblib missing, or older than 1.3 (no parallel_config)
    from ._fallback import Parallel, cpu_count, delayed, parallel_config

    USE_JOBLIB = False
else:
    USE_JOBLIB = True

__all__ = ["USE_JOBLIB", "Parallel", "cpu_count", "delayed", "parallel_config"]
