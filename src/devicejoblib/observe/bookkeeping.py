"""Bookkeeping never costs a result: the trace, the progress bar and the placement model
are updated through these guards, whose errors become one warning."""

from __future__ import annotations

from .._utils import warn_once


def report_lost(what, exc):
    """An error while keeping ``what`` up to date: one warning; the calls go on."""
    warn_once(f"devicejoblib could not update {what} ({type(exc).__name__}: {exc}); "
              "results are not affected", RuntimeWarning, key=("bookkeeping", what))


def guarded(what, function):
    """``function``, whose errors cost one warning naming ``what``, never the caller's
    work (it returns None then)."""

    def run(*args):
        try:
            return function(*args)
        except Exception as exc:
            report_lost(what, exc)
            return None

    return run


def after(bookkeeping, callback, what):
    """``callback`` (may be None), preceded by ``bookkeeping(future)``, whose errors
    cost one warning naming ``what``, never the result nor the callback."""

    def wrapped(future):
        try:
            bookkeeping(future)
        except Exception as exc:
            report_lost(what, exc)
        finally:
            if callback is not None:
                callback(future)

    return wrapped
