"""Batch image classification with PyTorch on every GPU: a stream of image batches (as a
data loader over a directory would give), a network resident once per GPU, results as
host tensors in order.

    python examples/torch_inference.py [--batches 200] [--images 32] [--seed 0]

Runs on simulated GPUs where the machine has none (CPU tensors stand for CUDA ones).
"""

import argparse

import torch

import devicejoblib
from devicejoblib import DeviceBackend, Parallel, delayed
from devicejoblib.kernels import classifier


def image_batches(n_batches, n_images):
    """What a DataLoader would yield: float32 image batches, one at a time."""
    for seed in range(n_batches):
        yield torch.from_numpy(classifier.images(n_images, seed))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="the network's weights")
    args = parser.parse_args()
    model = classifier.classify.setup_with(seed=args.seed)  # built once per GPU

    with devicejoblib.simulate_gpus.unless_real():
        backend = DeviceBackend(placement="gpu")  # every GPU; an error if there is none
        with Parallel(n_jobs=-1, backend=backend) as parallel:
            probabilities = parallel(delayed(model)(batch)
                                     for batch in image_batches(args.batches, args.images))
    classes = torch.cat([p.argmax(dim=1) for p in probabilities])
    print(f"{len(probabilities)} batches, {len(classes)} images classified; class counts "
          f"{torch.bincount(classes, minlength=classifier.CLASSES).tolist()}")
    print(backend.format_report())
    built = {device: n for (device, seed), n in sorted(classifier.BUILT.items())}
    print(f"networks built per device: {built}")


if __name__ == "__main__":
    main()
