"""The Numba CUDA kernel of :mod:`.numba_saxpy`, imported only when it is launched.

Defined at module level: Numba's CUDA simulator swaps the ``cuda`` name in a kernel's
globals while the kernel runs, so ``cuda`` must be a global here, not a closure.
"""

from numba import cuda


@cuda.jit
def saxpy_kernel(a, x, y, out):
    i = cuda.grid(1)
    if i < x.size:
        out[i] = a * x[i] + y[i]
