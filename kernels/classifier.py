"""Batch image classification with PyTorch: a small convolutional network built in code
(seeded random weights: nothing is downloaded), resident on each device, many batches
of 32x32 RGB images.

The model is the kernel's resident state, made once per device by its setup (on a GPU
in its worker thread, moved there with ``device.torch``); ``classify.setup_with(seed=1)``
gives the setup another argument (another model). A call takes a batch of images
(NumPy or a tensor, shape ``(n, 3, 32, 32)``) and returns class probabilities ``(n,
10)`` as a tensor. Calls of batches of one shape are fused on a GPU: their images go
through the network in one forward pass (on the CPU they are not: stacking them measured
slower there, bench_torch.py).
"""

from devicejoblib import kernel

CLASSES = 10
SHAPE = (3, 32, 32)

#: (device id, seed) -> how often a setup built the model in this process.
BUILT = {}


def build(seed=0):
    """The network, its weights drawn from ``seed``, in evaluation mode."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, CLASSES))
    with torch.no_grad():
        for parameter in model.parameters():
            fan_in = parameter[0].numel() if parameter.dim() > 1 else 10
            scale = (2.0 / fan_in) ** 0.5  # (He's: activations keep their spread)
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


def images(n, seed=0):
    """``n`` random images, a float32 NumPy array of shape ``(n, 3, 32, 32)``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tint = rng.normal(0.0, 2.0, (n, SHAPE[0], 1, 1))  # each image a colour of its own
    return (rng.standard_normal((n, *SHAPE)) + tint).astype("float32")


@kernel
def classify(model, batch):
    """Class probabilities of each image of ``batch``, shape ``(n, 10)``."""
    return _forward(model, batch)


@classify.cuda(library="torch")
def _(model, batch):
    return _forward(model, batch)


@classify.batched(device="cuda")  # (on CPUs a 32-image batch fills the cores already)
def _(model, batch):  # (calls, n, 3, 32, 32): one forward pass over every image
    calls, n = batch.shape[:2]
    return _forward(model, batch.reshape(calls * n, *SHAPE)).reshape(calls, n, CLASSES)


@classify.setup
def _(device, seed=0):
    BUILT[(device.id, seed)] = BUILT.get((device.id, seed), 0) + 1
    return build(seed).to(device.torch)


def _forward(model, batch):
    import torch

    parameter = next(model.parameters())
    with torch.inference_mode():
        x = torch.as_tensor(batch).to(parameter.device, parameter.dtype)
        return model(x).softmax(-1)
