"""Write a query result to a directory: ``result.json`` (stable schema) and a PNG chart.

``result.json`` holds :meth:`QueryResult.to_dict` (format ``fedcustomer.analytics.result/1``):
``query_id``, ``spec``, ``kind``, ``dataset``, ``confidence``, ``partners``, ``refused``
(partner -> reason), ``spend`` (partner -> epsilon_total/target after this query; for a replayed
query id the partner's spend now, with ``epsilon_total_when_paid`` the total its first answer paid),
``rows`` (``group``, ``statistic``, ``label``, ``estimate``, ``ci_low``, ``ci_high``,
``noise_sd``; means also carry ``count`` and ``sum`` rows), ``partner_rows`` (quality),
``notes``, ``latency_s``; plus ``truth`` when a local run asked for true values.
``anchors.jsonl`` beside it gains one line per partner per query: the partner's audit anchor
(see :mod:`fedcustomer.privacy.audit.anchors`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedcustomer.analytics.combine import QueryResult
from fedcustomer.common.files import atomic_write_text


def write_result(
    out: Path,
    result: QueryResult,
    *,
    truth: Sequence[dict[str, Any]] | None = None,
    name: str = "result",
    interval_label: str | None = None,
    mean_bars: str = "mean",
) -> dict[str, Path]:
    """``interval_label`` names the intervals as the caller's table does (e.g. "95% simultaneous").

    ``mean_bars`` says what a mean query's chart shows: the means the table shows (``"mean"``, what a
    query asked for) or the group sizes behind them (``"count"``, the RFM segment sizes).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = result.to_dict()
    if truth is not None:
        payload["truth"] = list(truth)
    path = out / f"{name}.json"
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    written = {"json": path}
    if result.anchors:  # appended: every query's anchors stay on record in this directory
        written["anchors"] = append_anchors(out / "anchors.jsonl", result.anchors)
    chart = plot_result(
        out / f"{name}.png", result, truth, interval_label=interval_label, mean_bars=mean_bars
    )
    if chart is not None:
        written["png"] = chart
    return written


def append_anchors(path: Path, lines: Sequence[dict[str, Any]]) -> Path:
    """Append the partners' audit anchors (one JSON line each) with one ``O_APPEND`` write."""
    data = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def _bars(
    result: QueryResult, mean_bars: str = "mean"
) -> tuple[list[str], list[float], list[float], list[float], str] | None:
    rows = result.rows
    if result.spec.kind == "mean" and mean_bars == "count":
        rows = [r["count"] for r in rows]
        what = "customers (DP count)"
    elif result.spec.kind == "mean":
        field = getattr(result.spec, "field", None)
        what = f"mean {field} (DP)" if field else "mean (DP)"
    elif result.spec.kind in ("count", "sum", "histogram"):
        what = f"{result.spec.kind} (DP)"
    elif result.spec.kind == "funnel":
        rows = [r for r in rows if r["statistic"] == "reached"]
        what = "customers reaching step (DP)"
    else:
        return None
    labels = [
        " / ".join([*r["group"].values(), *([r["label"]] if r.get("label") else [])]) or "all" for r in rows
    ]
    est = [r["estimate"] for r in rows]
    return labels, est, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], what


def plot_result(
    path: Path,
    result: QueryResult,
    truth: Sequence[dict[str, Any]] | None = None,
    interval_label: str | None = None,
    mean_bars: str = "mean",
) -> Path | None:
    """Bar chart of the released values with their intervals as error bars (None for kinds without one).

    The title says what the bars are (a mean query's means, or with ``mean_bars="count"`` its DP
    counts), and the interval level is the one the caller's table states, not the adjusted
    per-interval level behind it.
    """
    bars = _bars(result, mean_bars)
    if bars is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, est, lo, hi, what = bars
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(labels) + 2), 3.8))
    x = list(range(len(labels)))
    ax.bar(x, est, color="#4C72B0", label="DP estimate")
    # The interval is drawn from its own ends, not as +- around the estimate: a noisy count may fall
    # below zero while its interval, which knows a count cannot, starts at zero (found by a new-user trial).
    ax.errorbar(
        x,
        [(a + b) / 2 for a, b in zip(lo, hi)],
        yerr=[(b - a) / 2 for a, b in zip(lo, hi)],
        fmt="none",
        ecolor="black",
        capsize=4,
        label=f"{interval_label or _level(result.spec.confidence)} interval",
    )
    if truth is not None and (
        result.spec.kind == "count" or (result.spec.kind, mean_bars) == ("mean", "count")
    ):
        key = "count" if result.spec.kind == "mean" else "truth"
        ax.scatter(x, [t[key] for t in truth], color="#DD8452", zorder=3, label="true value (local run)")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel(what)
    if min(est, default=0.0) >= 0:  # a mean over negative bounds may be below zero
        ax.set_ylim(bottom=0)
    ax.set_title(
        f"{result.spec.dataset}: {what} (epsilon {result.spec.epsilon:g} per partner, "
        f"{len(result.partners)} partners)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _level(confidence: float) -> str:
    """'95%', or '99.58%' for a Bonferroni-adjusted level (never rounds up to 100%)."""
    text = f"{confidence * 100:.2f}".rstrip("0").rstrip(".")
    return f"{text}%"
