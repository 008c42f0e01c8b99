"""Boot timelines as SVG Gantt charts: one bar per phase, on a time axis in seconds.

Input is the JSON shape of ``vm timeline --json`` (``Timeline.as_dict()``), so a chart can be
drawn for a boot recorded on another machine. Every bar is a ``<rect class="phase">`` carrying
``data-phase`` (and a ``<title>`` with its label and duration) so tests and readers can find it
in the DOM. Text is escaped: console lines and names are data, not markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

# One colour per phase family; phases not listed share the last one.
_COLOURS: tuple[tuple[str, str], ...] = (
    ("vm-start", "#9aa5b1"),
    ("firmware", "#f0a35e"),
    ("tftp", "#e6c84f"),
    ("http-first-stage", "#e6c84f"),  # the first stage, as tftp (UEFI HTTP Boot)
    ("ipxe", "#7fbf7f"),
    ("http", "#5aa9e6"),
    ("handover", "#b39ddb"),
    ("kernel", "#8e7cc3"),
    ("ready", "#2e7d32"),
    ("", "#c0c0c0"),
)

ROW = 22  # px per bar row
LABEL_W = 170  # px for the phase labels on the left
CHART_W = 620  # px for the time axis


def colour(phase: str) -> str:
    for prefix, value in _COLOURS:
        if phase.startswith(prefix):
            return value
    return _COLOURS[-1][1]


def _tick_step(span: float) -> float:
    """A round step giving about 5-10 ticks over ``span`` seconds."""
    if span <= 0:
        return 1.0
    raw = span / 8
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return float(mult * power)
    return float(10 * power)


def _axis(span: float, top: int, height: int) -> list[str]:
    out: list[str] = []
    step = _tick_step(span)
    t = 0.0
    while t <= span + 1e-9:
        x = LABEL_W + CHART_W * (t / span if span else 0)
        out.append(
            f'<line class="tick" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + height}"'
            ' stroke="#e0e0e0"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{top + height + 14}" font-size="11" text-anchor="middle"'
            f' fill="#555">{t:g} s</text>'
        )
        t += step
    return out


@dataclass(frozen=True)
class Bar:
    row: int
    label: str
    name: str
    start: float
    duration: float
    note: str = ""


def _bars_svg(bars: Sequence[Bar], rows: Sequence[str], span: float, title: str) -> str:
    span = span if span > 0 else 1.0
    height = ROW * max(len(rows), 1)
    top = 24
    width = LABEL_W + CHART_W + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gantt" width="{width}"'
        f' height="{top + height + 24}" viewBox="0 0 {width} {top + height + 24}"'
        ' font-family="sans-serif">',
        f"<title>{escape(title)}</title>",
        f'<text x="4" y="15" font-size="12" font-weight="bold">{escape(title)}</text>',
        *_axis(span, top, height),
    ]
    for i, row in enumerate(rows):
        y = top + i * ROW
        parts.append(
            f'<text class="row-label" x="{LABEL_W - 6}" y="{y + ROW * 0.68:.1f}" font-size="12"'
            f' text-anchor="end">{escape(row)}</text>'
        )
    for bar in bars:
        x = LABEL_W + CHART_W * bar.start / span
        w = max(CHART_W * bar.duration / span, 1.5)  # an instant still shows
        y = top + bar.row * ROW + 3
        tip = f"{bar.label}: {bar.start:.3f} s + {bar.duration:.3f} s"
        if bar.note:
            tip += f" ({bar.note})"
        parts.append(
            f'<rect class="phase" data-phase={quoteattr(bar.name)} x="{x:.1f}" y="{y}"'
            f' width="{w:.1f}" height="{ROW - 6}" rx="2" fill="{colour(bar.name)}">'
            f"<title>{escape(tip)}</title></rect>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _phases(tl: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in tl.get("phases", []) if isinstance(p, dict)]


def _end(tl: dict[str, Any]) -> float:
    ends = [float(p["start"]) + float(p.get("duration") or 0.0) for p in _phases(tl)]
    for key in ("total", "exited"):
        if tl.get(key) is not None:
            ends.append(float(tl[key]))
    return max(ends, default=0.0)


def timeline_svg(tl: dict[str, Any]) -> str:
    """One boot: a row per phase, in the order the phases happened."""
    phases = _phases(tl)
    bars = [
        Bar(
            row=i,
            label=str(p.get("label", p["name"])),
            name=str(p["name"]),
            start=float(p["start"]),
            duration=float(p.get("duration") or 0.0),
        )
        for i, p in enumerate(phases)
    ]
    total = tl.get("total")
    title = f"{tl.get('vm', '?')}: " + (
        f"ready after {float(total):.2f} s" if total is not None else "not ready"
    )
    return _bars_svg(bars, [b.label for b in bars], _end(tl), title)


def started(tl: dict[str, Any]) -> float | None:
    """When a timeline's boot started (epoch seconds), from its ISO 8601 ``started``."""
    try:
        return datetime.fromisoformat(str(tl["started"])).timestamp()
    except (KeyError, ValueError):
        return None


def overview_svg(timelines: Sequence[tuple[str, dict[str, Any] | None]]) -> str:
    """Many machines on one time axis (from the earliest start): a row per machine, its phases
    side by side. A machine without a timeline keeps its row, empty."""
    rows = [name for name, _tl in timelines]
    origin = min(
        (t for _n, tl in timelines if tl is not None and (t := started(tl)) is not None),
        default=0.0,
    )
    bars: list[Bar] = []
    span = 0.0
    for row, (_name, tl) in enumerate(timelines):
        if tl is None:
            continue
        offset = (started(tl) or origin) - origin
        for p in _phases(tl):
            bars.append(
                Bar(
                    row=row,
                    label=str(p.get("label", p["name"])),
                    name=str(p["name"]),
                    start=offset + float(p["start"]),
                    duration=float(p.get("duration") or 0.0),
                )
            )
        span = max(span, offset + _end(tl))
    return _bars_svg(bars, rows, span, "all machines")
