"""What a simulated GPU's work costs: the thread bound to each simulated device, and, for
a device with a timing profile, the host time each array operation holds the GIL for
and a device clock that runs ahead of the host, asynchronously, as a real GPU's queue
does. Synchronising waits for that clock without holding the GIL.

Without a profile nothing is charged: the arrays cost what NumPy costs.
"""

from __future__ import annotations

import os
import threading
import time

_bound = threading.local()  # .device: the simulated Device of this thread; .waited
_devices = {}  # device id -> _DeviceClock, made when a thread first binds to the device
_made = threading.Lock()
_SLEEP_SLACK = 5e-4
# lets other threads run without sleeping (a sleep of 0 costs ~80 us on some kernels)
_yield = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))


class _DeviceClock:
    """One simulated device's profile, the time its queued work ends, and what it was
    charged: array operations and the device seconds they took, host-device copies
    and their bytes."""

    __slots__ = ("device", "device_seconds", "ends", "lock", "operations", "profile",
                 "transferred_bytes", "transfers")

    def __init__(self, device, profile):
        self.device, self.profile = device, profile
        self.ends = 0.0  # perf_counter() time at which the device's queued work is done
        self.lock = threading.Lock()
        self.operations = self.transfers = self.transferred_bytes = 0
        self.device_seconds = 0.0


def clock_of(device):
    """The :class:`_DeviceClock` of simulated ``device`` (made on first use)."""
    clock = _devices.get(device.id)
    if clock is None or clock.device != device:
        with _made:
            clock = _devices.get(device.id)
            if clock is None or clock.device != device:
                from .profiles import load_profile

                profile = load_profile(device.profile) if device.profile else None
                clock = _devices[device.id] = _DeviceClock(device, profile)
    return clock


def bind(device):
    """Bind the calling thread to simulated ``device`` (None: unbind); the previous one."""
    previous = getattr(_bound, "device", None)
    _bound.device = device
    if device is not None:
        clock_of(device)
    return previous


def bound_device():
    """The simulated device the calling thread is bound to, or None."""
    return getattr(_bound, "device", None)


def device_for(device_id):
    """The clock of the simulated device ``device_id`` when this process has bound a
    thread to it, else None (its arrays are then charged nothing)."""
    return _devices.get(device_id)


def waited():
    """Seconds the calling thread slept waiting for simulated devices (a real thread
    spins there: its CPU time counts it)."""
    return getattr(_bound, "waited", 0.0)


def charge_operation(clock, started, nbytes=0, flops=0):
    """An array operation begun at ``started`` (perf_counter) on the device of ``clock``,
    which touched ``nbytes`` of device memory and did ``flops``: its thread holds the GIL
    for the rest of the profile's host time per operation, and the device's clock runs
    on by the operation's device time from then (NumPy's time computing it counts
    towards both: an operation costs the longer of NumPy's time and the profile's)."""
    profile = clock.profile if clock is not None else None
    if profile is None:
        return
    launched = started + profile.host_seconds_per_operation
    _spin_until(launched)
    device_seconds = max(profile.kernel_seconds, nbytes / profile.device_bytes_per_second,
                         flops / profile.flops_per_second)
    with clock.lock:  # (NumPy's time beyond the host's share stood for the device's)
        clock.ends = max(clock.ends, launched) + device_seconds
        clock.operations += 1
        clock.device_seconds += device_seconds


def charge_transfer(clock, nbytes, to_device, started=None):
    """A host-device copy of ``nbytes`` begun at ``started`` (NumPy's copy made since
    counts towards it): ordered after the device's queued work, and waited for
    (pageable host memory: the host takes part in the copy)."""
    profile = clock.profile if clock is not None else None
    if profile is None:
        return
    rate = (profile.host_to_device_bytes_per_second if to_device
            else profile.device_to_host_bytes_per_second)
    started = time.perf_counter() if started is None else started
    launched = started + profile.host_seconds_per_operation
    _spin_until(launched)
    seconds = profile.transfer_seconds + nbytes / rate
    with clock.lock:
        clock.ends = max(clock.ends, launched) + seconds
        clock.transfers += 1
        clock.transferred_bytes += nbytes
        clock.device_seconds += seconds
    synchronize(clock)


def synchronize(clock):
    """Wait, not holding the GIL, until the device's queued work is done."""
    if clock is None or clock.profile is None:
        return
    started = time.perf_counter()
    ends = clock.ends
    if ends <= started:
        return
    if ends - started > _SLEEP_SLACK:  # (a sleep overshoots by tens of microseconds)
        time.sleep(ends - started - _SLEEP_SLACK)
    while time.perf_counter() < ends:  # the rest yielding the GIL, as CUDA's spin does
        _yield()
    _bound.waited = waited() + time.perf_counter() - started


def synchronize_device(device=None):
    """Wait for simulated ``device``'s queued work (default: the calling thread's
    device; none bound, nothing to wait for)."""
    device = device or bound_device()
    if device is not None:
        synchronize(clock_of(device))


def _spin_until(deadline):
    """Busy the calling thread until ``deadline``, holding the GIL as CuPy's host-side
    work does (the interpreter may still switch threads every switch interval)."""
    while time.perf_counter() < deadline:
        pass
