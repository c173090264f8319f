"""SAXPY as a Numba CUDA kernel (``@cuda.jit``): the reference for kernels written in
Numba rather than CuPy.

On a real GPU it launches on the worker's device; on a simulated GPU it runs under
Numba's CUDA simulator when ``NUMBA_ENABLE_CUDASIM=1`` (one launch at a time, through
:func:`devicejoblib.numba_cuda_lock`), and as NumPy otherwise.
"""

import functools
import os

import numpy as np

from devicejoblib import current_device, kernel, numba_cuda_lock

THREADS_PER_BLOCK = 128


@functools.cache
def _compiled():
    from numba import cuda

    from ._numba_saxpy_cuda import saxpy_kernel

    return cuda, saxpy_kernel


@kernel
def saxpy(a, x, y):
    """``a * x + y`` on 1-D float arrays."""
    return a * np.asarray(x) + np.asarray(y)


@saxpy.cuda
def _(a, x, y):
    device = current_device()
    if device.simulated and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        return a * x + y
    cuda, saxpy_kernel = _compiled()
    out = cuda.device_array_like(x) if not device.simulated else np.empty_like(x)
    blocks = (x.size + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    with numba_cuda_lock():
        saxpy_kernel[blocks, THREADS_PER_BLOCK](a, x, y, out)
    return out if device.simulated else out.copy_to_host()
