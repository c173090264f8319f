"""The dispatch report: a row per device (calls, batches, seconds...) and its lines."""

from __future__ import annotations

import collections

_COUNTS = ("calls", "batches", "seconds", "working_seconds", "auto_calls",
           "calibrating_calls")


def minus(row, before):
    """A report row with the counts of ``before`` (the same device's, earlier) taken off."""
    return {key: value - before.get(key, 0) if key in _COUNTS else value
            for key, value in row.items()}


def with_placements(report, placed, route_of):
    """Add to ``report``'s rows the calls learned placement sent to each device
    (``placed``: device id -> ``{"auto_calls", "calibrating_calls"}``), under the row
    ``route_of(device id)`` (made if missing)."""
    for device_id, counts in placed.items():
        row = report.setdefault(route_of(device_id), {"calls": 0, "batches": 0,
                                                      "seconds": 0.0})
        row.update(counts)
    return report


def format_report(report, since=None):
    """One line per device of ``report`` (a GPU worker that spent a tenth of its busy
    time or more not working, by its cost timer, says so); with ``since`` (an earlier
    report), what was done after it."""
    lines = []
    for device, r in report.items():
        if since is not None:
            r = minus(r, since.get(device, {}))
            if not r["calls"] and "lost" not in r:
                continue
        timing = f" ({r['timing']})" if "timing" in r else ""
        lines.append(
            f"{device}{timing}: {r['calls']} calls in {r['batches']} batches, "
            f"{r['seconds']:.3f}s"
            + (f", batch size {r['batch_size']} ({r['batch_policy']})"
               if "batch_size" in r else "") + _waited(r))
    return "\n".join(lines)


def _waited(row):
    """", 35% of it not working (waits for the GIL, a core, I/O)" for a report row whose
    worker's cost timer left out a tenth of its busy time or more; else ""."""
    seconds, working = row.get("seconds"), row.get("working_seconds")
    if not seconds or working is None or working > 0.9 * seconds:
        return ""
    return f", {1 - working / seconds:.0%} of it not working (waits for the GIL, a core, I/O)"


def call_report(report, before, placer=None, placed=None):
    """The lines a verbose ``Parallel`` call ends with: what each device did since
    ``before`` (an earlier report), and why the calls placed ``"auto"`` since
    ``placed`` (an earlier copy of the placer's decisions) went where they did."""
    lines = format_report(report, since=before).splitlines()
    explained = "" if placer is None else placer.explain(
        since=placed or collections.Counter())
    if explained:
        lines += ["placed 'auto' in this call:", *explained.splitlines()]
    return lines
