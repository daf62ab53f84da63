"""Line charts drawn on the server as SVG: no chart library, nothing fetched by the browser.

Every label is escaped (partner names and metric names come from files); numbers are
formatted, never interpolated raw. A chart with many points is thinned to at most
``MAX_POINTS`` per series by even striding (first and last kept), so a long run's page
stays small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 560, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 130, 16, 32
MAX_POINTS = 400
MARKED_POINTS = 40
COLOURS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
)

Series = tuple[str, Sequence[tuple[float, float]]]


def _thin(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return list(points)
    step = (len(points) - 1) / (MAX_POINTS - 1)
    return [points[round(i * step)] for i in range(MAX_POINTS)]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3g}"


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str = "round",
    y_label: str = "",
    x_format: Callable[[float], str] | None = None,
) -> Markup:
    """An SVG line chart of ``series`` (name, [(x, y), ...]); an empty chart says so.

    ``x_format`` writes the x ticks (e.g. times), numbers otherwise.
    """
    x_text = x_format or _fmt
    points = [p for _, pts in series for p in pts if math.isfinite(p[0]) and math.isfinite(p[1])]
    head = (
        f'<svg class="chart" role="img" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}"><title>{escape(title)}</title>'
    )
    if not points:
        return Markup(
            f'{head}<text x="{WIDTH // 2}" y="{HEIGHT // 2}" text-anchor="middle">{escape(title)}: no data yet</text></svg>'
        )
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if y0 == y1:
        y0, y1 = y0 - 1, y1 + 1
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = [head, f'<text x="{LEFT}" y="11" class="chart-title">{escape(title)}</text>']
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999" stroke-width="0.5"/>'
    )
    for t in _ticks(y0, y1):
        y = sy(t)
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    for t in _ticks(x0, x1):
        x = sx(t)
        parts.append(
            f'<text x="{x:.1f}" y="{TOP + plot_h + 14}" text-anchor="middle" class="tick">{escape(x_text(t))}</text>'
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle" class="axis">{escape(x_label)}</text>'
    )
    if y_label:
        parts.append(
            f'<text x="12" y="{TOP + plot_h / 2:.0f}" transform="rotate(-90 12 {TOP + plot_h / 2:.0f})" '
            f'text-anchor="middle" class="axis">{escape(y_label)}</text>'
        )
    for i, (name, pts) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        good = _thin([p for p in pts if math.isfinite(p[0]) and math.isfinite(p[1])])
        if good:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}" data-series="{escape(name)}"/>'
            )
            if len(good) <= MARKED_POINTS:  # few points: mark each (a single one has no line)
                parts.extend(
                    f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in good
                )
        ly = TOP + 12 + i * 14
        parts.append(f'<rect x="{WIDTH - RIGHT + 8}" y="{ly - 8}" width="10" height="3" fill="{colour}"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 22}" y="{ly}" class="legend">{escape(name[:18])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
