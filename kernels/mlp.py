"""Batched MLP inference: fixed weights (made in code, seeded), many input batches;
matmul + bias + ReLU layers, then a softmax.

The weights are resident state: made once per device by the kernel's setup (on a GPU,
in its worker thread, so they live there), not shipped with every call.
"""

import itertools

import numpy as np

from devicejoblib import array_module, kernel

#: Layer widths: inputs, hidden layers, classes.
LAYERS = (64, 256, 256, 10)
SEED = 1234

#: (device id, setups run) in this process: how often each device made its weights.
SETUPS = {}


def weights(layers=LAYERS, seed=SEED):
    """The model's weights and biases on the host, as float32 arrays."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((m, n)).astype(np.float32) / np.float32(np.sqrt(m)),
             rng.standard_normal(n).astype(np.float32) * np.float32(0.1))
            for m, n in itertools.pairwise(layers)]


@kernel
def infer(model, batch):
    """Class probabilities, shape (rows, classes), for one batch of shape (rows, 64)."""
    return _forward(model, batch, np)


@infer.cuda
def _(model, batch):
    return _forward(model, batch, array_module())


@infer.batched
def _(model, batch):
    return _forward(model, batch, array_module())  # (calls, rows, 64): matmul broadcasts


@infer.setup
def _(device):
    SETUPS[device.id] = SETUPS.get(device.id, 0) + 1
    xp = array_module()  # CuPy on a real GPU's worker thread: the weights go there
    return [(xp.asarray(w), xp.asarray(b)) for w, b in weights()]


def _forward(model, batch, xp):
    x = xp.asarray(batch, dtype=xp.float32)
    for i, (w, b) in enumerate(model):
        x = x @ w + b
        if i < len(model) - 1:
            x = xp.maximum(x, 0)
    x = x - x.max(axis=-1, keepdims=True)
    e = xp.exp(x)
    return e / e.sum(axis=-1, keepdims=True)
