"""Iterating the logistic map ``x <- r x (1 - x)``: Python-level work in every call,
which the batched form runs as one vectorised loop over all fused calls.

One call alone has nothing to offload (a scalar loop), so the kernel has no unfused GPU
implementation: on a GPU, fused calls run the batched form there and a lone call runs
the scalar loop on the GPU's worker thread.
"""

from devicejoblib import array_module, kernel


@kernel
def logistic_map(x0, r, steps):
    """The state after ``steps`` iterations from ``x0`` with rate ``r`` (floats)."""
    x = x0
    for _ in range(steps):
        x = r * x * (1 - x)
    return x


@logistic_map.batched(same=("steps",))
def _(x0, r, steps):
    xp = array_module()
    x, r = xp.asarray(x0, dtype=float), xp.asarray(r, dtype=float)
    for _ in range(steps):
        x = r * x * (1 - x)
    return x
