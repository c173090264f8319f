"""PyTorch batch inference through the backend: models resident once per device with the
user's setup arguments, tensors routed by where they live, fused requests stacked and
split in order, PyTorch's threads limited on CPU workers, the same results as a plain
torch loop — on simulated GPUs and CPU workers (a lent GPU runs the gpu-marked ones)."""

import json
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import devicejoblib  # noqa: E402
from devicejoblib import DeviceBackend, Parallel, delayed, kernel, simulate_gpus  # noqa: E402
from devicejoblib.kernels import classifier  # noqa: E402

BATCHES = [classifier.images(4, seed) for seed in range(10)]


def expected(seed=0):
    model = classifier.build(seed)
    return [classifier._forward(model, b) for b in BATCHES]


def same(out, wanted):
    assert len(out) == len(wanted)
    for got, want in zip(out, wanted):
        assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
        assert not got.requires_grad
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("placement", ["gpu", "cpu", None])
@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
@pytest.mark.parametrize("batch_size", ["auto", 1, 3])
def test_results_equal_a_plain_torch_loop(placement, return_as, batch_size):
    with simulate_gpus(2):
        out = list(Parallel(n_jobs=2, backend=DeviceBackend(placement=placement,
                                                            cpu_backend="threading"),
                            return_as=return_as, batch_size=batch_size)(
            delayed(classifier.classify)(b) for b in BATCHES))
    wanted = expected()
    if return_as == "generator_unordered":  # (rows sorted by their first probability)
        out = sorted(out, key=lambda t: float(t[0, 0]))
        wanted = sorted(wanted, key=lambda t: float(t[0, 0]))
    same(out, wanted)


def test_the_model_is_built_once_per_device_with_the_setup_arguments():
    classifier.BUILT.clear()
    seeded = classifier.classify.setup_with(seed=7)
    with simulate_gpus(2), devicejoblib.parallel_config(
            backend=DeviceBackend(placement="gpu")):
        for _ in range(3):  # three Parallel calls, one backend: the models stay resident
            out = Parallel(n_jobs=2)(delayed(seeded)(b) for b in BATCHES)
    same(out, expected(seed=7))
    assert classifier.BUILT == {("cuda:0", 7): 1, ("cuda:1", 7): 1}
    with pytest.raises(TypeError, match=r"Invalid setup arguments \['checkpoint'\] for the "
                       r"setup of 'classify'"):
        classifier.classify.setup_with(checkpoint="model.pt")
    with pytest.raises(TypeError, match="has no setup"):
        kernel(len).setup_with(seed=1)


def test_setup_arguments_reach_a_worker_process_once_not_with_every_call():
    heavy = np.zeros(2_000_000, np.float32)  # 8 MB: what a model object weighs
    with_state = kernel(_first_and_size)
    with_state.setup(_keep)
    given = with_state.setup_with(weights=heavy)
    out = Parallel(n_jobs=2, backend=DeviceBackend(placement="cpu"))(
        delayed(given)(i) for i in range(40))
    assert [value for value, _ in out] == list(range(40))
    assert {size for _, size in out} == {heavy.size}
    import pickle

    assert len(pickle.dumps(given)) < 10_000  # the kernel travels without its arguments


def _keep(device, weights):
    return weights


def _first_and_size(state, i):
    return i, state.size


def test_a_tensors_device_decides_its_calls_device():
    with simulate_gpus(2):
        kept = Parallel(n_jobs=2, backend=DeviceBackend(placement="cuda:1",
                                                        keep_on_device=True))(
            delayed(classifier.classify)(b) for b in BATCHES[:2])
        assert [devicejoblib.arrays.home_of(t) for t in kept] == ["cuda:1", "cuda:1"]
        where = Parallel(n_jobs=2, backend="device")(delayed(_where)(t) for t in kept * 3)
    assert where == ["cuda:1"] * 6


@kernel
def _where(x):
    return "cpu"


@_where.cuda(library="torch")
def _(x):
    return devicejoblib.current_device().id


def test_fused_calls_stack_and_split_in_order():
    sizes = [2, 2, 2, 5, 2, 5]  # two shapes: two fused groups, results in call order
    batches = [classifier.images(n, seed) for seed, n in enumerate(sizes)]
    model = classifier.build(0)
    with simulate_gpus(1):
        backend = DeviceBackend(placement="gpu")
        out = Parallel(n_jobs=2, backend=backend, pre_dispatch="all", batch_size=6)(
            delayed(classifier.classify)(b) for b in batches)
    assert [tuple(t.shape) for t in out] == [(n, 10) for n in sizes]
    same(out, [classifier._forward(model, b) for b in batches])
    assert backend.report()["cuda:0"]["batches"] == 1  # one group, its two launches fused


def test_torch_threads_are_limited_to_each_workers_share(run_python, tmp_path):
    # a user's module imports torch at its top: a worker imports it with the calls
    (tmp_path / "user_model.py").write_text(textwrap.dedent("""
        import torch

        def threads(_):
            return torch.get_num_threads(), torch.get_num_interop_threads()
    """))
    out = run_python(textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import torch
        from devicejoblib import DeviceBackend, Parallel, cpu_count, delayed
        from user_model import threads

        if __name__ == "__main__":
            before, runs = torch.get_num_threads(), {{}}
            for route in ("loky", "threading"):
                backend = DeviceBackend(placement="cpu", cpu_backend=route)
                runs[route] = Parallel(n_jobs=2, backend=backend)(
                    delayed(threads)(i) for i in range(8))
            print(json.dumps({{"runs": runs, "cores": cpu_count(), "before": before,
                               "after": torch.get_num_threads()}}))
    """), json_out=True)
    share = max(out["cores"] // 2, 1)
    assert {tuple(t) for t in out["runs"]["loky"]} == {(share, share)}
    assert {t[0] for t in out["runs"]["threading"]} == {share}
    assert out["after"] == out["before"]  # restored once the call ended


def test_out_of_memory_on_a_simulated_gpu_falls_back_to_the_cpu():
    big = classifier.images(256)  # 3 MiB of images: more than the GPU's memory
    with simulate_gpus(1, memory="1MiB"), pytest.warns(RuntimeWarning, match="does not "
                                                       "fit on cuda:0"):
        out = Parallel(n_jobs=2, backend=DeviceBackend(cpu_backend="threading"))(
            delayed(classifier.classify)(big) for _ in range(2))
    same(out, [classifier._forward(classifier.build(0), big)] * 2)


DISCOVER_THROUGH_TORCH = """
    import json, sys, types
    # a stand-in for a CUDA build of PyTorch on a machine with two GPUs
    import importlib.machinery
    torch = types.ModuleType("torch")
    torch.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    torch.__version__ = "2.11.0+cu130"
    torch.version = types.SimpleNamespace(cuda="13.0")
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", multi_processor_count=132,
                                  major=9, minor=0)
    torch.cuda = types.SimpleNamespace(
        device_count=lambda: 2, get_device_properties=lambda i: props,
        mem_get_info=lambda i: (70 * 2**30, 80 * 2**30))
    sys.modules["torch"] = torch
    from devicejoblib._platforms import CUDAPlatform
    CUDAPlatform.unavailable_reason = lambda self: None  # (no driver on this machine)
    import devicejoblib
    print(json.dumps([(d.id, d.name, d.provider, d.compute_capability)
                      for d in devicejoblib.devices()[1:]]))
"""


def test_with_pytorch_and_without_cupy_the_gpus_are_listed_through_pytorch(run_python):
    found = run_python(DISCOVER_THROUGH_TORCH, block=("cupy", "numba"), json_out=True)
    assert found == [["cuda:0", "NVIDIA H100 80GB HBM3", "torch", [9, 0]],
                     ["cuda:1", "NVIDIA H100 80GB HBM3", "torch", [9, 0]]]


def test_importing_devicejoblib_does_not_import_torch(run_python):
    out = run_python("import json, sys, devicejoblib, devicejoblib.kernels\n"
                     "print(json.dumps('torch' in sys.modules))", json_out=True)
    assert out is False


@pytest.mark.gpu
def test_on_a_real_gpu_tensors_and_cupy_arrays_share_memory():
    cupy = pytest.importorskip("cupy")
    with simulate_gpus(0):
        tensor = torch.arange(4.0, device="cuda:0")
        view = devicejoblib.get_array_library("cupy").to_device(tensor)
        view += 1  # a view of the same memory (DLPack), no copy
        assert tensor.tolist() == [1.0, 2.0, 3.0, 4.0] and isinstance(view, cupy.ndarray)
        out = Parallel(n_jobs=2, backend=DeviceBackend(placement="gpu"))(
            delayed(classifier.classify)(b) for b in BATCHES)
    same(out, expected())
    assert json.dumps(classifier.BUILT)  # (built on the real GPU's thread)
