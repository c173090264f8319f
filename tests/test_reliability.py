"""Nothing the backend keeps on the side — the placement model, a trace — may cost a
call's result: a setting that cannot be resolved, or a model file that cannot be read,
is a warning and a fresh start."""

import warnings

import pytest

from devicejoblib import DeviceBackend, Parallel, delayed, kernel, simulate_gpus


@kernel
def double(x):
    return 2 * x


@double.cuda
def _(x):
    return 2 * x


def run(**backend_args):
    with simulate_gpus(1):
        return Parallel(n_jobs=2, backend=DeviceBackend(cpu_backend="threading",
                                                        **backend_args))(
            delayed(double.on("auto"))(i) for i in range(20))


def test_a_model_path_that_cannot_be_resolved_is_a_warning_not_lost_results(
        monkeypatch, fresh_warnings):
    monkeypatch.setenv("DEVICEJOBLIB_MODEL_PATH", "~no-such-user-of-this-machine/model.json")
    with pytest.warns(RuntimeWarning, match="cannot be resolved"):
        out = run()
    assert out == [2 * i for i in range(20)]


def test_a_deeply_nested_model_file_is_a_warning_and_a_fresh_start(
        monkeypatch, tmp_path, fresh_warnings):
    path = tmp_path / "model.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    monkeypatch.setenv("DEVICEJOBLIB_MODEL_PATH", str(path))
    with pytest.warns(RuntimeWarning, match="is unreadable .RecursionError"):
        out = run()
    assert out == [2 * i for i in range(20)]


def test_a_trace_path_with_a_tilde_is_the_home_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert run(trace="~/run.json") == [2 * i for i in range(20)]
    assert (tmp_path / "run.json").is_file()
