"""SAXPY as a Numba CUDA kernel (``@cuda.jit``): the reference for kernels written in
Numba rather than CuPy.

The device's platform says what differs: on a CuPy GPU the kernel launches on the
worker's stream into CuPy's memory pool; on a Numba-only GPU into a Numba device array; on
a simulated GPU under Numba's CUDA simulator when ``NUMBA_ENABLE_CUDASIM=1`` (one launch
at a time), and as NumPy otherwise.
"""

import functools

import numpy as np

from devicejoblib import current_device, kernel

THREADS_PER_BLOCK = 128


@functools.cache
def _compiled():
    from ._numba_saxpy_cuda import saxpy_kernel

    return saxpy_kernel


@kernel
def saxpy(a, x, y):
    """``a * x + y`` on 1-D float arrays."""
    return a * np.asarray(x) + np.asarray(y)


@saxpy.cuda
def _(a, x, y):
    device = current_device()
    platform = device.platform
    if not platform.runs_numba_cuda():
        return a * x + y
    saxpy_kernel = _compiled()
    blocks = (x.size + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    out = platform.empty_like(x, device)
    platform.launch_numba(saxpy_kernel, blocks, THREADS_PER_BLOCK, a, x, y, out,
                          device=device)
    return out
