"""Charts drawn on the server as inline SVG: no script, no CDN, no build step, and they print.

Each chart is a ``viewBox`` scaled to its container's width (so it fits a phone), with a
``<title>`` on every bar for the exact figure and an ``aria-label`` summary for screen readers.
Colours come from classes styled in ``console.css`` (the page's CSP allows no inline styles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 720
HEIGHT = 220
PAD_LEFT = 56
PAD_RIGHT = 8
PAD_TOP = 10
PAD_BOTTOM = 26


@dataclass(frozen=True, slots=True)
class Bar:
    label: str  # the x-axis label (a day: "11-24")
    parts: tuple[float, ...]  # stacked from the bottom; one class per part
    title: str  # the tooltip: exact figures


def _nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^n at or above ``value`` (a round top for the axis)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1) if value >= 1 else 1.0
    while magnitude > value:
        magnitude /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _tick(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def bar_chart(bars: Sequence[Bar], *, label: str, part_classes: Sequence[str], testid: str) -> Markup:
    """Vertical bars (stacked when a bar has several parts), with four gridlines and round ticks."""
    top = _nice_max(max((sum(b.parts) for b in bars), default=0.0))
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    slot = plot_w / max(1, len(bars))
    bar_w = max(1.0, slot * 0.72)
    out = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
           f'data-testid="{escape(testid)}" preserveAspectRatio="xMidYMid meet">']
    for i in range(5):
        value = top * i / 4
        y = PAD_TOP + plot_h - plot_h * i / 4
        out.append(f'<line class="grid-line" x1="{PAD_LEFT}" y1="{y:.1f}" x2="{WIDTH - PAD_RIGHT}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick(value)}</text>')
    every = max(1, len(bars) // 5)  # at most about six day labels: readable on a phone too
    for index, bar in enumerate(bars):
        x = PAD_LEFT + index * slot + (slot - bar_w) / 2
        base = float(PAD_TOP + plot_h)
        out.append(f'<g class="bar"><title>{escape(bar.title)}</title>')
        for part, css in zip(bar.parts, part_classes, strict=False):
            h = plot_h * part / top if top else 0.0
            if h > 0:
                out.append(f'<rect class="{css}" x="{x:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}"/>')
                base -= h
        out.append("</g>")
        if index % every == 0:
            out.append(f'<text class="tick" x="{x + bar_w / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                       f'{escape(bar.label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every text and attribute above went through escape()


@dataclass(frozen=True, slots=True)
class Share:
    label: str
    value: float
    shown: str  # the figure as the page shows it


def share_bars(rows: Sequence[Share], *, label: str, testid: str, limit: int = 10) -> Markup:
    """Horizontal bars, longest first: where the credits went (by model, by key). The names and
    figures are HTML text (readable at any width); each bar is a tiny SVG stretched to its share."""
    rows = list(rows)[:limit]
    top = max((r.value for r in rows), default=0.0) or 1.0
    out = [f'<div class="shares" role="img" aria-label="{escape(label)}" data-testid="{escape(testid)}">']
    for row in rows:
        share = max(0.5, 100 * row.value / top) if row.value > 0 else 0.0
        out.append(f'<div class="share" title="{escape(row.label)}: {escape(row.shown)}">'
                   f'<span class="share-name">{escape(row.label)}</span>'
                   f'<svg class="share-bar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true">'
                   f'<rect class="part-0" x="0" y="0" width="{share:.2f}" height="10"/></svg>'
                   f'<span class="share-value">{escape(row.shown)}</span></div>')
    out.append("</div>")
    return Markup("".join(out))  # noqa: S704 - every text and attribute above went through escape()
