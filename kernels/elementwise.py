"""The smallest calls: SAXPY (``a * x + y``) and a sum of squares.

Written once against the array module (NumPy on the CPU, CuPy on a GPU); their batched
forms take a new leading axis, one row per call.
"""

from devicejoblib import kernel


@kernel(portable=True)
def saxpy(a, x, y):
    """``a * x + y`` for a scalar ``a`` and arrays ``x``, ``y`` of one shape."""
    return a * x + y


@saxpy.batched
def _(a, x, y):
    return a.reshape(-1, *[1] * (x.ndim - 1)) * x + y


@kernel(portable=True)
def sum_of_squares(x):
    """``(x * x).sum()`` as a 0-d array of ``x``'s dtype."""
    return (x * x).sum()


@sum_of_squares.batched
def _(x):
    return (x * x).reshape(len(x), -1).sum(axis=1)
