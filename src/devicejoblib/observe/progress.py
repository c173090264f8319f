"""A progress bar for calls done, with the calls done per device: tqdm on a terminal,
plain text lines otherwise (a log, a notebook's captured output, CI)."""

from __future__ import annotations

import sys
import threading
import time

#: Seconds between two plain text lines (the first and last are always written).
LINE_EVERY = 1.0


class Progress:
    """Calls done out of a total that may be known only at the end.

    Parameters
    ----------
    desc : str
        What is counted, shown first.
    unit : str
    file : file object, optional
        Where to write (default: standard error, read at each write).
    """

    def __init__(self, desc="devicejoblib", unit="calls", file=None):
        self.desc, self.unit = desc, unit
        self._file = file
        self._lock = threading.Lock()
        self.done, self.total = 0, None
        self.per_device = {}
        self._bar = self._last_line = None
        stream = self.file
        if getattr(stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm
            except ImportError:  # (an optional dependency: devicejoblib[progress])
                pass
            else:
                self._bar = tqdm(desc=desc, unit=unit.rstrip("s") or unit, file=stream,
                                 leave=True, dynamic_ncols=True)

    @property
    def file(self):
        return self._file if self._file is not None else sys.stderr

    def update(self, n, where=None, total=None):
        """``n`` more done (on the device ``where``); ``total`` once it is known."""
        with self._lock:
            self.done += n
            if where is not None:
                self.per_device[where] = self.per_device.get(where, 0) + n
            if total is not None:
                self.total = total
            if self._bar is not None:
                if total is not None and self._bar.total != total:
                    self._bar.total = total
                self._bar.set_postfix_str(self._devices(), refresh=False)
                self._bar.update(n)
            elif self._last_line is None or time.monotonic() - self._last_line >= LINE_EVERY:
                self._write_line()

    def close(self):
        """The final state, written once."""
        with self._lock:
            if self._bar is not None:
                self._bar.set_postfix_str(self._devices(), refresh=False)
                self._bar.close()
                self._bar = None
            elif self.done:
                self._write_line()

    def _devices(self):
        return ", ".join(f"{device} {n}" for device, n in self.per_device.items())

    def _write_line(self):
        total = f"/{self.total}" if self.total is not None else ""
        devices = f" ({self._devices()})" if self.per_device else ""
        print(f"{self.desc}: {self.done}{total} {self.unit}{devices}", file=self.file,
              flush=True)
        self._last_line = time.monotonic()
