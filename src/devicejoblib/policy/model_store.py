"""Where the placement model is kept between processes: a JSON file under the user's
cache folder (platformdirs), one section per host, written atomically under a lock so
that several processes at once never corrupt it. A file that cannot be read, or of
another format or version, is a warning and a fresh start, never a crash.

``DEVICEJOBLIB_MODEL_PATH`` relocates it, or turns it off (``off``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
from pathlib import Path

from .._utils import format_bytes, warn_once, write_json_atomically
from .placement import CostModel, History, bucket_size, device_model

MODEL_PATH_ENV = "DEVICEJOBLIB_MODEL_PATH"
# version 2: a real GPU's samples are its worker thread's CPU time (in version 1 the wall
# clock, which counted the thread's waits for the GIL: such samples would keep auto off
# the GPU)
FORMAT, VERSION = "devicejoblib placement model", 2
_SEP = "\x1f"  # between the parts of a key (names may hold any printable character)

_models = {}  # path (or None: off) -> the CostModel this process uses
_lock = threading.Lock()


def model_path():
    """The model file's path, or None when ``DEVICEJOBLIB_MODEL_PATH=off`` — or when the
    setting cannot be resolved (``~nouser/...``: a warning, never a lost result)."""
    raw = os.environ.get(MODEL_PATH_ENV)
    if raw is not None and raw.strip().lower() in ("off", "none", "0", "false"):
        return None
    if raw:
        try:
            return Path(raw).expanduser()
        except RuntimeError as exc:  # no such user's home
            warn_once(f"{MODEL_PATH_ENV}={raw!r} cannot be resolved ({exc}): the placement "
                      "model is not kept (set a path this user can write, or 'off')",
                      RuntimeWarning, key=("model path", raw))
            return None
    try:
        import platformdirs
    except ImportError:  # a dependency, but a bare image may lack it: the XDG default
        folder = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
        return folder / "devicejoblib" / "placement-model.json"
    return Path(platformdirs.user_cache_dir("devicejoblib")) / "placement-model.json"


def host_key():
    """The section of the file this machine's measurements go to."""
    return platform.node() or "unknown-host"


def get_model():
    """The process's cost model, loaded from the model file on first use."""
    path = model_path()
    with _lock:
        model = _models.get(path)
        if model is None:
            model = _models[path] = _load(path)
    return model


def save(model=None):
    """Write what this process learnt since it loaded the file (merged with what other
    processes wrote meanwhile); nothing when nothing changed or the model is off."""
    path = model_path()
    model = model or get_model()
    if path is None or not model.dirty:
        return
    with model._lock:
        dirty, model.dirty = model.dirty, set()
        entries = {}  # (what, key in the file) -> value, copied under the lock
        for key in dirty:
            if key[0] == "history":
                _, kernel, device, bucket = key
                history = model.histories[(kernel, device)][bucket]
                entries[("history", _SEP.join((kernel, device, str(bucket))))] = {
                    "seen": history.seen, "samples": list(history.samples)}
            else:
                _, device, kernel = key
                entries[("launch_sizes", _SEP.join((device, kernel)))] = \
                    model.launch_sizes[(device, kernel)]
    try:
        with _file_lock(path):
            hosts = _read(path, quiet=True)
            section = hosts.get(host_key())
            if not (isinstance(section, dict) and all(
                    isinstance(section.get(part), dict)
                    for part in ("history", "launch_sizes"))):
                section = hosts[host_key()] = {"history": {}, "launch_sizes": {}}
            for (part, key), value in entries.items():
                section[part][key] = value
            write_json_atomically(path, {"format": FORMAT, "version": VERSION, "hosts": hosts})
    except BaseException:
        with model._lock:  # not written: keep it for the next save
            model.dirty |= dirty
        raise


def learnt_launch_size(device, kernels):
    """The launch size a GPU of ``device``'s model settled on for ``kernels`` (names) in
    an earlier process (the smallest, if several), or None."""
    model = get_model()
    sizes = [model.launch_size(device_model(device), k) for k in kernels]
    sizes = [s for s in sizes if s]
    return min(sizes) if sizes else None


def remember_launch_sizes(sizers):
    """Keep the launch sizes GPUs settled on (per kernel they fused), and save what this
    process learnt; an unwritable model file, or anything else going wrong, is a
    warning (never a lost result). A size a cap of this process held (its
    ``max_batch_size``, its memory) does not replace a larger one learnt."""
    try:
        _remember_launch_sizes(sizers)
    except Exception as exc:
        warn_once(f"the placement model could not be kept ({type(exc).__name__}: {exc}): "
                  "the results are not affected", RuntimeWarning,
                  key=("model kept", type(exc).__name__))


def _remember_launch_sizes(sizers):
    settled = [s for s in sizers if s.settled and s.settled_for]
    if not settled and not _models:
        return  # nothing loaded, nothing learnt (and the path not even looked up)
    model = _models.get(model_path())
    if model is None and not settled:
        return  # nothing loaded, nothing learnt
    model = model or get_model()
    for sizer in settled:
        name = device_model(sizer.device)
        for kernel in sizer.settled_for:
            known = model.launch_size(name, kernel)
            if not (sizer.capped and known is not None and known > sizer.size):
                model.set_launch_size(name, kernel, sizer.size)
    try:
        save(model)
    except (OSError, ValueError, TypeError) as exc:
        warn_once(f"the placement model could not be saved to {model_path()} "
                  f"({type(exc).__name__}: {exc}): set {MODEL_PATH_ENV} to a writable "
                  "file, or to off", RuntimeWarning)


def reset():
    """Delete the model file and forget the loaded model; the path, or None if off."""
    path = model_path()
    with _lock:
        _models.pop(path, None)
    if path is not None:
        try:
            with _file_lock(path), contextlib.suppress(FileNotFoundError):
                path.unlink()
        except OSError as exc:
            raise ValueError(f"cannot delete the placement model {path} "
                             f"({type(exc).__name__}: {exc}); {MODEL_PATH_ENV} should name "
                             "a file") from exc
    return path


def describe():
    """This host's section of the model file, as rows for ``devicejoblib model show``."""
    path = model_path()
    model = _load(path)
    rows = []
    for (kernel, device), buckets in sorted(model.histories.items()):
        for bucket, history in sorted(buckets.items()):
            seconds, how = model.predict(kernel, device, bucket)
            rows.append({"kernel": kernel, "device": device, "bucket": bucket,
                         "size": format_bytes(int(bucket_size(bucket))),
                         "samples": len(history.samples), "seconds_per_call": seconds,
                         "how": how})
    sizes = [{"device": device, "kernel": kernel, "launch_size": size}
             for (device, kernel), size in sorted(model.launch_sizes.items())]
    return {"path": str(path) if path else None, "host": host_key(), "histories": rows,
            "launch_sizes": sizes}


def _load(path):
    """A cost model holding this host's section of the file at ``path`` (None: off)."""
    model = CostModel()
    if path is not None:
        _merge_into(model, _read(path).get(host_key(), {}))
    return model


def _merge_into(model, section):
    try:
        for key, entry in section.get("history", {}).items():
            kernel, device, bucket = key.split(_SEP)
            model.histories.setdefault((kernel, device), {})[int(bucket)] = History(
                [float(s) for s in entry["samples"]], int(entry["seen"]))
        for key, size in section.get("launch_sizes", {}).items():
            device, kernel = key.split(_SEP)
            model.launch_sizes[(device, kernel)] = int(size)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        warn_once(f"the placement model file {model_path()} holds an entry this version "
                  f"cannot read ({type(exc).__name__}: {exc}): placement starts afresh",
                  RuntimeWarning)
        model.histories.clear()
        model.launch_sizes.clear()


def _read(path, quiet=False):
    """The file's hosts, or ``{}`` (with a warning) when it is missing, unreadable or
    of another format or version."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:  # (deeply nested JSON too)
        why = f"unreadable ({type(exc).__name__}: {exc})"
    else:
        if isinstance(data, dict) and data.get("format") == FORMAT \
                and data.get("version") == VERSION and isinstance(data.get("hosts"), dict):
            return data["hosts"]
        why = "of another format or version"
    if not quiet:
        warn_once(f"the placement model file {path} is {why}: placement starts afresh "
                  "(it is rewritten when this process has learnt something; `devicejoblib "
                  "model reset` deletes it)", RuntimeWarning)
    return {}


@contextlib.contextmanager
def _file_lock(path):
    """Hold an exclusive lock on ``path``'s lock file (POSIX; elsewhere the atomic
    rename alone protects the file, and a concurrent update may be lost)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
