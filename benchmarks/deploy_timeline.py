"""Where a deployed two-party job's wall time goes, read from the logs its processes already write.

Seconds from the submission (``flwr run`` started) to: ``flwr run`` returned; the SuperLink created
the run (its access log); the ServerApp process asked for its task (Flower's ``flwr-serverapp``:
its first Runtime API call, after importing flwr) or the warm executor's child started the run; the
first message reached a party (its executor took the run's first task); the PSI matched (the
bank's log); the last task a party answered; the summary written. Per party: tasks answered and the
seconds its ClientApp spent on them (the warm executor's ``task completed in`` lines), the rest of
each exchange being transport and waiting.
"""

from __future__ import annotations

import calendar
import re
import time
from pathlib import Path

ACCESS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z .*\"POST (/v1/[a-z/-]+) ")
PYLOG = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ ([\w.]+): (.*)$")


def _utc(stamp: str) -> float:
    whole, _, frac = stamp.partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


def _local(stamp: str, millis: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def _lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def _after(events: list[tuple[float, str]], since: float, needle: str) -> float | None:
    return next((t for t, text in events if t >= since and needle in text), None)


def party_events(path: Path) -> list[tuple[float, str]]:
    """(time, message) of a node log's Python logging lines (the executor's and the party's)."""
    out = []
    for line in _lines(path):
        m = PYLOG.match(line)
        if m:
            out.append((_local(m.group(1), m.group(2)), f"{m.group(3)}: {m.group(4)}"))
    return out


def timeline(
    started: float, submitted: float, superlink_log: Path, node_logs: list[Path], summary: Path
) -> dict[str, object]:
    """Seconds since ``started`` (wall clock) of each step, and each party's tasks and work."""
    link = [(_utc(m.group(1)), m.group(2)) for m in map(ACCESS.match, _lines(superlink_log)) if m]
    link_py = party_events(superlink_log)
    created = _after(link, started - 1, "/v1/control/start-run")
    serverapp = _after(link, started, "/v1/runtime/pull-task-input") or _after(
        link_py, started, "warm ServerApp: run"
    )
    out: dict[str, object] = {
        "flwr_run_returned": submitted - started,
        "run_created": None if created is None else created - started,
        "serverapp_started": None if serverapp is None else serverapp - started,
    }
    firsts, lasts = [], []
    for path in node_logs:
        events = [(t, text) for t, text in party_events(path) if t >= started]
        tasks = [float(m.group(1)) for _, text in events if (m := re.search(r"task \S+ in ([\d.]+) s", text))]
        first = _after(events, started, "served by worker")
        done = [t for t, text in events if "task " in text and " in " in text and "warm ClientApp" in text]
        name = path.parent.parent.name
        out[f"{name}_tasks"] = len(tasks)
        out[f"{name}_work_s"] = round(sum(tasks), 2)
        psi = _after(events, started, "matched:")
        if psi is not None:
            out[f"{name}_psi_matched"] = psi - started
        if first is not None:
            firsts.append(first)
        if done:
            lasts.append(max(done))
    out["first_message_at_party"] = min(firsts) - started if firsts else None
    out["last_task_done"] = max(lasts) - started if lasts else None
    out["summary_written"] = summary.stat().st_mtime - started if summary.exists() else None
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}
