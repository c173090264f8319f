"""Cost of the safe import and of device discovery, side by side in one run.

Each measurement runs in a fresh interpreter (imports are cached within one), repeated;
medians are printed with the ratio of `import devicejoblib` to `import joblib`.

    python benchmarks/bench_import.py [--repeat 15]
"""

import argparse
import json
import statistics
import subprocess
import sys

PROBE = """
import json, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import {module}
t1 = time.perf_counter()
out = {{"import": t1 - t0}}
if {discover}:
    import devicejoblib
    t2 = time.perf_counter(); devicejoblib.devices(); t3 = time.perf_counter()
    devicejoblib.devices(); t4 = time.perf_counter()
    out.update(first_devices=t3 - t2, cached_devices=t4 - t3)
print(json.dumps(out))
"""


def measure(module, discover, repeat, env=None):
    runs = []
    for _ in range(repeat):
        code = PROBE.format(module=module, discover=discover)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env=env)
        runs.append(json.loads(proc.stdout))
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    import os

    joblib = measure("joblib", False, args.repeat)
    ours = measure("devicejoblib", True, args.repeat)
    simulated = measure("devicejoblib", True, args.repeat,
                        env={**os.environ, "DEVICEJOBLIB_SIMULATE_GPUS": "2"})
    ms = 1e3
    print(f"median of {args.repeat} fresh interpreters, Python {sys.version.split()[0]}")
    print(f"import joblib                 {joblib['import'] * ms:7.1f} ms")
    print(f"import devicejoblib           {ours['import'] * ms:7.1f} ms   "
          f"ratio to joblib {ours['import'] / joblib['import']:.2f}")
    print(f"devices(), first call         {ours['first_devices'] * ms:7.2f} ms")
    print(f"devices(), first, 2 simulated {simulated['first_devices'] * ms:7.2f} ms")
    print(f"devices(), cached             {ours['cached_devices'] * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
