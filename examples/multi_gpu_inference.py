"""Multi-GPU batch inference: a model applied to many input batches, spread over every
GPU; the weights are made once per GPU (resident state), not shipped with each batch.

    python examples/multi_gpu_inference.py [--batches 400] [--rows 256]
"""

import argparse

import numpy as np

from devicejoblib import DeviceBackend, Parallel, delayed
from devicejoblib.kernels import mlp


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--rows", type=int, default=256)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    batches = (rng.standard_normal((args.rows, mlp.LAYERS[0])).astype(np.float32)
               for _ in range(args.batches))

    backend = DeviceBackend(placement="gpu")  # every GPU; an error if there is none
    with Parallel(n_jobs=-1, backend=backend) as parallel:
        probabilities = parallel(delayed(mlp.infer)(batch) for batch in batches)
    classes = np.concatenate([p.argmax(axis=1) for p in probabilities])
    print(f"{len(probabilities)} batches, {len(classes)} rows classified; "
          f"class counts {np.bincount(classes, minlength=mlp.LAYERS[-1]).tolist()}")
    print(backend.format_report())
    print(f"weights made per device: {dict(sorted(mlp.SETUPS.items()))}")


if __name__ == "__main__":
    main()
