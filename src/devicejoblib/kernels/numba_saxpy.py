"""SAXPY as a Numba CUDA kernel (``@cuda.jit``): the reference for kernels written in
Numba rather than CuPy.

On a real GPU it launches on the worker's device; on a simulated GPU it runs under
Numba's CUDA simulator when ``NUMBA_ENABLE_CUDASIM=1`` (one launch at a time, through
:func:`devicejoblib.numba_cuda_lock`), and as NumPy otherwise.
"""

import functools
import os
import sys

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
    blocks = (x.size + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    if device.simulated:
        out = np.empty_like(x)
        with numba_cuda_lock():
            saxpy_kernel[blocks, THREADS_PER_BLOCK](a, x, y, out)
        return out
    cupy = sys.modules.get("cupy")
    if cupy is None:  # a Numba-only machine: Numba's own arrays and stream
        out = cuda.device_array_like(x)
        saxpy_kernel[blocks, THREADS_PER_BLOCK](a, x, y, out)
        return out.copy_to_host()
    # Launch on the worker's CuPy stream, into CuPy's memory pool: ordered after the
    # copies that brought x and y, synchronised with the worker's batch.
    stream = cuda.external_stream(cupy.cuda.get_current_stream().ptr)
    out = cupy.empty_like(x)
    saxpy_kernel[blocks, THREADS_PER_BLOCK, stream](a, x, y, out)
    return out
