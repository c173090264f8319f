"""CPU or GPU for your own function? Write it once against the array module, then time
it on CPU workers and on GPU workers over a range of sizes.

    python examples/compare_cpu_gpu.py [--calls 100]
"""

import argparse
import time

import numpy as np

from devicejoblib import DeviceBackend, Parallel, array_module, delayed, devices, kernel


@kernel(portable=True)
def smooth(signal, width):
    """A moving average by cumulative sums: NumPy on the CPU, CuPy on a GPU."""
    xp = array_module()
    c = xp.cumsum(xp.concatenate([xp.zeros(1), xp.asarray(signal)]))
    return (c[width:] - c[:-width]) / width


def timed(placement, calls):
    backend = DeviceBackend(placement=placement)
    with Parallel(n_jobs=-1, backend=backend) as parallel:
        parallel(calls[:5])  # warm up the workers
        start = time.perf_counter()
        parallel(calls)
        seconds = time.perf_counter() - start
    backend.shutdown()
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    gpus = [str(d) for d in devices() if d.is_gpu]
    print(f"GPUs: {', '.join(gpus) or 'none'}")
    rng = np.random.default_rng(0)
    for size in (1_000, 100_000, 1_000_000):
        calls = [delayed(smooth)(rng.random(size), 25) for _ in range(args.calls)]
        cpu = timed("cpu", calls)
        line = f"size {size:>9}: cpu {cpu:6.3f}s"
        if gpus:
            gpu = timed("gpu", calls)
            line += f"   gpu {gpu:6.3f}s   speed-up {cpu / gpu:5.2f}x"
        print(line)


if __name__ == "__main__":
    main()
