import re

import pytest

import devicejoblib
from devicejoblib import USE_JOBLIB, Parallel, delayed

PROGRESS = re.compile(
    r"^\[Parallel\(n_jobs=-?\d+\)\]: Done +\d+ "
    r"(tasks +\| elapsed: +[\d.]+s"
    r"|out of +\d+ \| elapsed: +[\d.]+s( remaining: +[\d.]+s| finished))$"
)
FALLBACK = ("joblib",)  # modules made unimportable for the no-joblib runs


def test_joblib_objects_are_joblibs_own():
    joblib = pytest.importorskip("joblib")
    assert USE_JOBLIB is True
    assert Parallel is joblib.Parallel
    assert delayed is joblib.delayed
    assert devicejoblib.parallel_config is joblib.parallel_config
    assert devicejoblib.cpu_count is joblib.cpu_count


def test_import_touches_no_gpu_package(run_python):
    out = run_python("""
        import json, sys
        import devicejoblib
        print(json.dumps(sorted(m for m in sys.modules
                                if m.split('.')[0] in ('cupy', 'numba', 'cupy_backends'))))
    """, json_out=True)
    assert out == []


def test_import_loads_no_cuda_driver(run_python):
    out = run_python("""
        import devicejoblib
        maps = open('/proc/self/maps').read()
        print('libcuda' in maps, 'libcudart' in maps)
    """)
    assert out.stdout.split() == ["False", "False"]


def test_seed_examples_match_with_and_without_joblib(run_python):
    code = "import json, seed_examples as s; print(json.dumps(s.seed_examples()))"
    with_joblib = run_python(code, json_out=True)
    without = run_python(code, block=FALLBACK, json_out=True)
    assert without == with_joblib
    assert with_joblib["sqrt"] == [float(i) for i in range(10)]
    assert with_joblib["modf"] == [[0.0, 0.5] * 5, [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0,
                                                    4.0, 4.0]]
    assert with_joblib["produced"] == [f"Produced {i}" for i in range(6)]
    assert with_joblib["nlargest_error"] == "TypeError"


def test_option_matrix_matches_with_and_without_joblib(run_python):
    code = "import json, seed_examples as s; print(json.dumps(s.option_matrix()))"
    with_joblib = run_python(code, json_out=True)
    without = run_python(code, block=FALLBACK, json_out=True)
    assert without == with_joblib
    assert with_joblib["1/list/auto"] == [list(divmod(i * 7, 3)) for i in range(25)]


def test_fallback_flags_and_warns_once(run_python):
    proc = run_python("""
        import warnings
        warnings.simplefilter("always")
        from devicejoblib import USE_JOBLIB, Parallel, delayed, JoblibMissingWarning
        with warnings.catch_warnings(record=True) as caught:
            Parallel(n_jobs=2)(delayed(abs)(-1) for _ in range(2))
            Parallel(n_jobs=2)(delayed(abs)(-1) for _ in range(2))
        mine = [w for w in caught if issubclass(w.category, JoblibMissingWarning)]
        print(USE_JOBLIB, len(mine), mine[0].filename == "<string>")
        print(mine[0].message)
    """, block=FALLBACK)
    flag, count, at_user_line, message = proc.stdout.split(maxsplit=3)
    assert (flag, count, at_user_line) == ("False", "1", "True")
    assert "pip install joblib" in message


@pytest.mark.parametrize("verbose, stream", [(10, "stderr"), (100, "stdout")])
@pytest.mark.parametrize("sized", [True, False])
def test_fallback_progress_lines_use_joblibs_format(run_python, verbose, stream, sized):
    items = "list(range(30))" if sized else "(i for i in range(30))"
    proc = run_python(f"""
        from devicejoblib import Parallel, delayed
        Parallel(n_jobs=2, verbose={verbose})(delayed(abs)(i) for i in {items})
    """, block=FALLBACK)
    lines = getattr(proc, stream).strip().splitlines()
    lines = [line for line in lines if line.startswith("[Parallel")]
    assert len(lines) >= 3
    assert all(PROGRESS.match(line) for line in lines), lines
    assert re.match(r"^\[Parallel\(n_jobs=2\)\]: Done +30 out of +30 .* finished$", lines[-1])


@pytest.mark.parametrize("kwargs, message", [
    ({"n_jobs": 0}, "Invalid n_jobs=0"),
    ({"n_jobs": "two"}, "Invalid n_jobs='two'"),
    ({"backend": "dask-ish"}, "Invalid backend='dask-ish'"),
    ({"return_as": "tuple"}, "Invalid return_as='tuple'"),
    ({"prefer": "gpus"}, "Invalid prefer='gpus'"),
    ({"require": "gpu"}, "Invalid require='gpu'"),
    ({"batch_size": 0}, "Invalid batch_size=0"),
    ({"pre_dispatch": "2*workers"}, "Invalid pre_dispatch='2*workers'"),
])
def test_fallback_rejects_bad_arguments(run_python, kwargs, message):
    proc = run_python(f"""
        from devicejoblib import Parallel
        try:
            Parallel(**{kwargs!r})
        except ValueError as exc:
            print(exc)
    """, block=FALLBACK)
    assert proc.stdout.startswith(message), proc.stdout
    assert "expected" in proc.stdout


def test_fallback_rejects_items_that_are_not_delayed_calls(run_python):
    proc = run_python("""
        from devicejoblib import Parallel, delayed
        try:
            Parallel(n_jobs=2)([delayed(abs)(-1), 5])
        except TypeError as exc:
            print(exc)
    """, block=FALLBACK)
    assert "item 1 is 5" in proc.stdout


def test_fallback_generator_is_lazy_and_raises_original_error(run_python):
    proc = run_python("""
        from devicejoblib import Parallel, delayed
        seen = []
        def f(x):
            seen.append(x)
            return 1 / x
        gen = Parallel(n_jobs=2, return_as="generator")(delayed(f)(x) for x in (2, 1, 0, 4))
        first = next(gen)
        print(first, seen)
        try:
            list(gen)
        except ZeroDivisionError:
            print("ZeroDivisionError", seen)
    """, block=FALLBACK)
    assert proc.stdout.splitlines() == ["0.5 [2]", "ZeroDivisionError [2, 1, 0]"]


def test_fallback_cpu_count_is_affinity_aware(run_python):
    proc = run_python("""
        import os
        from devicejoblib import cpu_count
        print(cpu_count() == len(os.sched_getaffinity(0)))
    """, block=FALLBACK)
    assert proc.stdout.strip() == "True"
