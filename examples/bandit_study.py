"""A bandit simulation study: UCB1 against Thompson sampling on Bernoulli arms, many
independent runs with their own seeds, as simulation studies write it with joblib.

    python examples/bandit_study.py [--runs 200] [--horizon 1000]

On a machine without a GPU, try DEVICEJOBLIB_SIMULATE_GPUS=2 to see the GPU path.
"""

import argparse

import numpy as np

from devicejoblib import Parallel, delayed, parallel_config
from devicejoblib.kernels.bandit import play


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--horizon", type=int, default=1000)
    args = parser.parse_args()
    probs = np.array([0.1, 0.3, 0.5, 0.55])

    with parallel_config(backend="device", verbose=1):
        for policy in ("ucb1", "thompson"):
            curves = Parallel(n_jobs=-1)(
                delayed(play)(probs, policy, args.horizon, seed) for seed in range(args.runs))
            final = np.array([c[-1] for c in curves])
            print(f"{policy:>9}: mean regret after {args.horizon} pulls "
                  f"{final.mean():7.2f} +- {final.std(ddof=1) / np.sqrt(len(final)):.2f}")


if __name__ == "__main__":
    main()
