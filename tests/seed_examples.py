"""The seed document's examples and a matrix of Parallel options, run as a script.

Prints one JSON object of results so that the test suite can compare a run with joblib
against a run where joblib cannot be imported (the sequential fallback).
"""

import contextlib
import io
import json
from heapq import nlargest
from math import modf, sqrt

from devicejoblib import USE_JOBLIB, Parallel, delayed, parallel_config


def producer():
    for i in range(6):
        print(f"Produced {i}")
        yield i


def seed_examples():
    squares = Parallel(n_jobs=1)(delayed(sqrt)(i**2) for i in range(10))
    r = Parallel(n_jobs=1)(delayed(modf)(i / 2.0) for i in range(10))
    res, i = zip(*r)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        out = Parallel(n_jobs=2, verbose=100, pre_dispatch="1.5*n_jobs")(
            delayed(sqrt)(i) for i in producer())
    produced = [line for line in stdout.getvalue().splitlines() if line.startswith("Produced")]
    try:
        Parallel(n_jobs=2)(delayed(nlargest)(2, n) for n in (range(4), "abcde", 3))
    except TypeError as exc:
        error = type(exc).__name__
    return {"sqrt": squares, "modf": [list(res), list(i)], "producer": out,
            "produced": produced, "nlargest_error": error}


def option_matrix():
    results = {}
    for n_jobs in (1, 2, -1):
        for return_as in ("list", "generator", "generator_unordered"):
            for batch_size in ("auto", 1, 3):
                out = Parallel(n_jobs=n_jobs, return_as=return_as, batch_size=batch_size)(
                    delayed(divmod)(i * 7, 3) for i in range(25))
                values = [list(v) for v in out]
                if return_as == "generator_unordered":
                    values.sort()
                results[f"{n_jobs}/{return_as}/{batch_size}"] = values
    with Parallel(n_jobs=2) as parallel:
        results["context"] = [parallel(delayed(pow)(i, 2) for i in range(k)) for k in (3, 5)]
    with parallel_config(n_jobs=2):
        results["config"] = Parallel()(delayed(abs)(-i) for i in range(4))
    results["kwargs"] = Parallel(n_jobs=2)(delayed(round)(i / 3, ndigits=2) for i in range(4))
    results["empty"] = Parallel(n_jobs=2)(delayed(abs)(i) for i in [])
    return results


if __name__ == "__main__":
    print(json.dumps({"use_joblib": USE_JOBLIB, "seed": seed_examples(),
                      "matrix": option_matrix()}))
