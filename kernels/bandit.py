"""Multi-armed bandit Monte-Carlo: Bernoulli arms, UCB1 or Thompson sampling, many
independent repetitions with their own seeds, each returning its regret curve.

The classic loop of simulation studies::

    Parallel(n_jobs=-1)(delayed(play)(probs, "ucb1", horizon, seed) for seed in seeds)

All randomness comes from one NumPy generator per seed, drawn on the host as arrays
(``draws``), so that the CPU loop, the GPU implementation and the batched form make the
same choices from the same numbers: the regret curves agree to float rounding.
"""

import numpy as np

from devicejoblib import array_module, kernel

POLICIES = ("ucb1", "thompson")


def draws(seed, horizon, n_arms):
    """The random numbers one run uses: reward uniforms and Thompson normals."""
    rng = np.random.default_rng(seed)
    return rng.random((horizon, n_arms)), rng.standard_normal((horizon, n_arms))


def _check(policy, horizon, probs):
    if policy not in POLICIES:
        raise ValueError(f"Invalid policy={policy!r}: expected one of {POLICIES}")
    if horizon < 1:
        raise ValueError(f"Invalid horizon={horizon!r}: expected a positive integer")
    if np.ndim(probs) < 1 or np.shape(probs)[-1] < 2:
        raise ValueError(f"Invalid probs of shape {np.shape(probs)}: expected >= 2 arms")


@kernel
def play(probs, policy, horizon, seed):
    """Cumulative expected regret after each of ``horizon`` pulls (float64 array).

    Parameters
    ----------
    probs : array of float, shape (arms,)
        Success probability of each Bernoulli arm.
    policy : {"ucb1", "thompson"}
        UCB1, or Thompson sampling with a Gaussian approximation of each arm's posterior
        (mean ``s/n``, variance ``s(n-s)/n^3``, one prior pull).
    horizon : int
        Pulls per run.
    seed : int
        Seed of the run's NumPy generator.
    """
    _check(policy, horizon, probs)
    probs = np.asarray(probs, dtype=float)
    uniforms, normals = draws(seed, horizon, len(probs))
    pulls, wins = np.ones(len(probs)), np.zeros(len(probs))
    wins += uniforms[0] < probs  # one prior pull of every arm
    best, regret, total = probs.max(), np.empty(horizon), 0.0
    for t in range(horizon):
        means = wins / pulls
        if policy == "ucb1":
            scores = means + np.sqrt(2.0 * np.log(t + len(probs)) / pulls)
        else:
            scores = means + np.sqrt(np.maximum(means * (1 - means), 1e-12) / pulls) * normals[t]
        arm = int(np.argmax(scores))
        pulls[arm] += 1
        wins[arm] += uniforms[t, arm] < probs[arm]
        total += best - probs[arm]
        regret[t] = total
    return regret


@play.batched(same=("policy", "horizon"))
def _(probs, policy, horizon, seed):
    xp = array_module()
    runs, n_arms = probs.shape
    host = [draws(int(s), horizon, n_arms) for s in np.asarray(_host(seed))]
    uniforms = xp.asarray(np.stack([u for u, _ in host], axis=1))  # (horizon, runs, arms)
    normals = xp.asarray(np.stack([z for _, z in host], axis=1))
    probs = xp.asarray(probs, dtype=float)
    pulls, wins = xp.ones((runs, n_arms)), (uniforms[0] < probs).astype(float)
    best, rows = probs.max(axis=1), xp.arange(runs)
    regret, total = xp.empty((runs, horizon)), xp.zeros(runs)
    for t in range(horizon):
        means = wins / pulls
        if policy == "ucb1":
            scores = means + xp.sqrt(2.0 * np.log(t + n_arms) / pulls)  # host log, as the CPU
        else:
            spread = xp.sqrt(xp.maximum(means * (1 - means), 1e-12) / pulls)
            scores = means + spread * normals[t]
        arm = xp.argmax(scores, axis=1)
        pulls[rows, arm] += 1
        wins[rows, arm] += uniforms[t, rows, arm] < probs[rows, arm]
        total += best - probs[rows, arm]
        regret[:, t] = total
    return regret


def _host(values):
    return values.get() if hasattr(values, "get") else values
