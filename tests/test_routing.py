"""The routing rule on its own: explicit placement > data affinity > capability."""


import numpy as np
import pytest

from device_kernels import cpu_only, gpu_only, plain_where, scale
from devicejoblib import DeviceUnavailableError, SimulatedDeviceArray
from devicejoblib.policy.routing import CPU_PROCESSES, CPU_THREADS, Router
from devicejoblib.run.fusion import to_host


def on_device(device, array):
    """``array`` kept on ``device``, as a GPU implementation's result is."""
    return to_host(SimulatedDeviceArray(array, device.id), device, keep_on_device=True)


def route(router, function, *args, load=None, **kwargs):
    if load is not None:  # {GPU id: calls pending}
        router = Router(router.devices, loads={k: (lambda v=v: v) for k, v in load.items()})
    return router.route(function, args, kwargs).id


def test_capability(two_gpus):
    router = Router(two_gpus)
    assert route(router, scale, 1) == "cuda:0"
    assert route(router, plain_where, 1) == "cpu"
    assert route(router, cpu_only, 1) == "cpu"
    assert route(router, gpu_only, 1) == "cuda:0"


def test_capability_spreads_over_the_least_loaded_gpu(two_gpus):
    router = Router(two_gpus)
    assert route(router, scale, 1, load={"cuda:0": 3, "cuda:1": 1}) == "cuda:1"


def test_affinity_beats_capability_and_load(two_gpus):
    router = Router(two_gpus)
    x = on_device(two_gpus[2], np.ones(3))
    busy_second = {"cuda:0": 0, "cuda:1": 99}
    assert route(router, scale, x, load=busy_second) == "cuda:1"
    assert route(router, plain_where, x) == "cuda:1"
    assert route(router, scale, 1, factor=x) == "cuda:1"


def test_explicit_placement_beats_affinity(two_gpus):
    router = Router(two_gpus)
    x = on_device(two_gpus[2], np.ones(3))
    assert route(router, scale.on("cuda:0"), x) == "cuda:0"
    assert route(router, scale.on("cpu"), x) == "cpu"


def test_backend_placement(two_gpus):
    assert route(Router(two_gpus, placement="cpu"), scale, 1) == "cpu"
    assert route(Router(two_gpus, placement="gpu"), plain_where, 1) == "cuda:0"
    assert route(Router(two_gpus, placement=["cuda:1"]), scale, 1) == "cuda:1"
    # a call's own pin wins over the backend's placement
    assert route(Router(two_gpus, placement="cpu"), scale.on("cuda:1"), 1) == "cuda:1"


def test_affinity_only_within_placement(two_gpus):
    x = on_device(two_gpus[2], np.ones(3))
    assert route(Router(two_gpus, placement="cuda:0"), scale, x) == "cuda:0"


def test_gpu_kernel_without_gpu_runs_on_cpu_with_one_warning(no_gpu, fresh_warnings):
    with pytest.warns(RuntimeWarning, match="no GPU") as record:
        router = Router(no_gpu)
        assert route(router, scale, 1) == "cpu"
        assert route(router, scale, 2) == "cpu"
    assert len([w for w in record if "no GPU" in str(w.message)]) == 1


def test_gpu_placement_without_gpu_raises(no_gpu):
    with pytest.raises(DeviceUnavailableError):
        Router(no_gpu, placement="gpu").route(scale, (1,), {})


def test_a_pin_outside_the_backends_devices_names_both(two_gpus):
    from devicejoblib import InvalidDeviceError, Parallel, delayed, parallel_config

    with parallel_config(backend="device", devices="cpu"), \
            pytest.raises(InvalidDeviceError, match=r"'cuda:0' is not among this backend's "
                          r"devices \(cpu\)"):
        Parallel(n_jobs=2)(delayed(scale.on("cuda:0"))(i) for i in range(4))


def test_a_placement_outside_the_backends_devices_is_refused(two_gpus):
    from devicejoblib import DeviceBackend, InvalidDeviceError

    with pytest.raises(InvalidDeviceError, match=r"Invalid placement 'cpu'.*cuda:0 "
                       r"\(simulated\), cuda:1 \(simulated\)"):
        DeviceBackend(devices="cuda", placement="cpu")


def test_a_kind_wide_placement_means_the_backends_devices_of_that_kind(two_gpus):
    router = Router([two_gpus[0], two_gpus[2]], placement="gpu")  # the CPU and cuda:1
    assert [d.id for d in router.default_allowed] == ["cuda:1"]
    assert route(router, plain_where, 1) == "cuda:1"


def test_a_batch_of_one_function_goes_where_the_rule_says_as_loads_and_routes_change(two_gpus):
    loads = {"cuda:0": 0, "cuda:1": 0}
    router = Router(two_gpus, loads={gpu: lambda gpu=gpu: loads[gpu] for gpu in loads})

    def split(function, n=3):
        parts = router.split([(function, (i,), {}) for i in range(n)])
        return [(target.route, positions) for target, positions in parts.items()]

    assert split(scale) == [("cuda:0", None)]
    loads["cuda:0"] = 5  # the least loaded GPU, batch by batch
    assert split(scale) == [("cuda:1", None)]
    assert split(plain_where) == [(CPU_PROCESSES, None)]
    router.start_call(CPU_THREADS, 2)  # prefer="threads": the CPU route changes
    assert split(plain_where) == [(CPU_THREADS, None)]
    router.lose("cuda:1", RuntimeError("gone"))
    assert split(scale) == [("cuda:0", None)]  # a lost GPU gets no more batches
