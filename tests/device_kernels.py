"""Kernels for the backend tests, importable by loky worker processes."""

import os
import threading
import time

import numpy as np

from devicejoblib import array_module, current_device, kernel


def where():
    """(device id, process id, thread name) of the calling code."""
    return current_device().id, os.getpid(), threading.current_thread().name


@kernel
def scale(x, factor=2):
    return x * factor


@scale.cuda
def _(x, factor=2):
    return x * factor


@kernel
def locate(tag):
    return (tag, *where())


@locate.cuda
def _(tag):
    return (tag, *where())


@kernel(nogil=True)
def locate_nogil(tag):
    return (tag, *where())


@kernel
def cpu_only(x):
    return x + 1


@kernel(gpu_only=True)
def gpu_only(x):
    return x - 1


@kernel(portable=True)
def norms(x):
    xp = array_module()
    return xp.sqrt((xp.asarray(x) ** 2).sum(axis=-1))


@kernel
def fails_on(x, bad):
    if x == bad:
        raise ValueError(f"bad input {x}")
    return x


@fails_on.cuda
def _(x, bad, delay=0.0):
    time.sleep(delay)
    if x == bad:
        raise ValueError(f"bad input {x}")
    return x


def plain_where(tag):
    return (tag, *where())


def plain_add(a, b):
    return np.add(a, b)
