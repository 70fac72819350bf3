"""Server-rendered SVG charts: small pure functions from numbers and labels to safe markup.

No JavaScript and no inline styles (the CSP forbids both): geometry and colours are SVG
presentation attributes, typography comes from classes in ``static/css/tollgate.css``. Every
piece of text is escaped here — agent names come from gateways and are attacker-controlled —
so the result can be marked safe as a whole. Each chart carries an accessible ``<title>`` and
``<desc>`` (``role="img"``, ``aria-labelledby``), a visible title and axis labels, a native
tooltip (``<title>``) on every mark, and ``data-*`` attributes with the raw numbers; an empty
data set gives a small chart that says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from django.utils.safestring import SafeString, mark_safe

_ID = re.compile(r"^[a-z][a-z0-9-]{0,40}$")

WIDTH = 720
FONT_CHAR_WIDTH = 6.2  # average advance of the 11 px chart font, to truncate labels that fit


@dataclass(frozen=True)
class Series:
    """One stacked series: a key (``data-series``, CSS class suffix), a label and a colour."""

    key: str
    label: str
    color: str


@dataclass(frozen=True)
class Column:
    """One x position of a stacked bar chart: a short tick label, a long label for tooltips and
    the value of each series (by key; missing keys are 0)."""

    label: str
    title: str
    values: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.values.values())


@dataclass(frozen=True)
class Bar:
    """One row of a horizontal bar chart."""

    label: str
    value: int


@dataclass(frozen=True)
class Deadline:
    """One item waiting against a deadline: ``seconds_left`` < 0 when it is overdue."""

    label: str
    seconds_left: int
    note: str = ""

    @property
    def breached(self) -> bool:
        return self.seconds_left <= 0


@dataclass(frozen=True)
class Slice:
    """One part of a donut."""

    key: str
    label: str
    value: int
    color: str


# --- Helpers ------------------------------------------------------------------------------------


def _e(value: object) -> str:
    """Escaped for element text and double-quoted attribute values alike."""
    return escape(str(value), quote=True)


def _num(value: float) -> str:
    """A coordinate: at most one decimal, no trailing zeros."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis (before escaping, so an entity is
    never cut in half)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: max(1, limit - 1)] + "…"


def nice_ticks(maximum: float, count: int = 4) -> list[float]:
    """Round axis ticks from 0 that cover ``maximum``: steps of 1, 2 or 5 × 10ⁿ."""
    if maximum <= 0:
        return [0, 1]
    raw = maximum / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if step < 1 and float(maximum).is_integer():
        step = 1  # counts: no fractional ticks
    top = math.ceil(maximum / step) * step
    ticks, value = [], 0.0
    while value <= top + step / 2:
        ticks.append(round(value, 6))
        value += step
    return ticks


def _tick_text(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def duration_text(seconds: int) -> str:
    """A short human duration: "2 d 3 h", "3 h 12 min", "12 min", "< 1 min"."""
    seconds = abs(int(seconds))
    minutes = seconds // 60
    if minutes < 1:
        return "< 1 min"
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min"


def _svg(chart_id: str, width: int, height: int, title: str, description: str,
         body: list[str], *, css: str = "chart") -> SafeString:
    if not _ID.match(chart_id):
        raise ValueError(f"chart id {chart_id!r}: lowercase letters, digits and dashes only")
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{chart_id}" class="{_e(css)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc">'
        f'<title id="{chart_id}-title">{_e(title)}</title>'
        f'<desc id="{chart_id}-desc">{_e(description)}</desc>'
        f'<text class="chart-title" x="0" y="16">{_e(title)}</text>'
    )
    return mark_safe(head + "".join(body) + "</svg>")  # noqa: S308 - every text escaped above


def empty_chart(chart_id: str, *, title: str, message: str, width: int = WIDTH) -> SafeString:
    """The chart's frame with ``message`` where the marks would be."""
    body = [
        f'<rect class="chart-frame" x="0.5" y="28.5" width="{width - 1}" height="60" rx="6" '
        'fill="#f6f7f9" stroke="#e4e7ec"/>',
        f'<text class="chart-empty-text" x="{width / 2:g}" y="63" text-anchor="middle">'
        f"{_e(message)}</text>",
    ]
    return _svg(chart_id, width, 100, title, f"{title}: {message}", body,
                css="chart chart-empty")


def _legend(series: Sequence[Series | Slice], *, x: float, y: float) -> list[str]:
    """Colour keys in one row, right-aligned to ``x``."""
    parts, widths = [], [18 + len(s.label) * FONT_CHAR_WIDTH + 14 for s in series]
    cursor = x - sum(widths)
    for item, width in zip(series, widths, strict=True):
        parts.append(
            f'<g class="legend-item" data-series="{_e(item.key)}">'
            f'<rect x="{_num(cursor)}" y="{_num(y - 9)}" width="10" height="10" rx="2" '
            f'fill="{_e(item.color)}"/>'
            f'<text class="chart-legend" x="{_num(cursor + 14)}" y="{_num(y)}">'
            f"{_e(item.label)}</text></g>"
        )
        cursor += width
    return parts


# --- Stacked bars (decisions over time) ---------------------------------------------------------


def stacked_bars(chart_id: str, *, title: str, description: str, columns: Sequence[Column],
                 series: Sequence[Series], x_label: str, y_label: str,
                 empty_message: str,
                 width: int = WIDTH) -> SafeString:
    """Vertical bars, one per column, each stacked by series in the order given."""
    if not columns or not any(c.total for c in columns):
        return empty_chart(chart_id, title=title, message=empty_message, width=width)
    height, left, right, top, bottom = 280, 58, 12, 44, 56
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks = nice_ticks(max(c.total for c in columns))
    scale = plot_h / ticks[-1]
    body = _legend(series, x=width - right, y=16)
    body.append('<g class="axis y-axis">')
    for tick in ticks:
        y = top + plot_h - tick * scale
        body.append(
            f'<line x1="{left}" x2="{width - right}" y1="{_num(y)}" y2="{_num(y)}" '
            'stroke="#e4e7ec"/>'
            f'<text class="chart-tick" x="{left - 6}" y="{_num(y + 4)}" text-anchor="end">'
            f"{_tick_text(tick)}</text>"
        )
    body.append("</g>")
    slot = plot_w / len(columns)
    bar_w = max(2.0, slot * 0.72)
    label_every = max(1, math.ceil(len(columns) / 12))
    body.append('<g class="marks">')
    for index, column in enumerate(columns):
        x = left + index * slot + (slot - bar_w) / 2
        base = top + plot_h
        for s in series:
            value = int(column.values.get(s.key, 0))
            if value <= 0:
                continue
            h = value * scale
            base -= h
            body.append(
                f'<rect class="bar series-{_e(s.key)}" data-series="{_e(s.key)}" '
                f'data-column="{_e(column.label)}" data-value="{value}" x="{_num(x)}" '
                f'y="{_num(base)}" width="{_num(bar_w)}" height="{_num(h)}" '
                f'fill="{_e(s.color)}"><title>{_e(column.title)} · {_e(s.label)}: '
                f"{value:,}</title></rect>"
            )
    body.append("</g>")
    body.append('<g class="axis x-axis">'
                f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" '
                f'y2="{top + plot_h}" stroke="#98a2b3"/>')
    for index, column in enumerate(columns):
        if index % label_every:
            continue
        x = left + index * slot + slot / 2
        body.append(f'<text class="chart-tick" x="{_num(x)}" y="{top + plot_h + 16}" '
                    f'text-anchor="middle">{_e(truncate(column.label, 12))}</text>')
    body.append("</g>")
    body += _axis_labels(x_label, y_label, width=width, left=left, right=right, top=top,
                         plot_h=plot_h, height=height)
    return _svg(chart_id, width, height, title, description, body)


def _axis_labels(x_label: str, y_label: str, *, width: int, left: float, right: float,
                 top: float, plot_h: float, height: float) -> list[str]:
    mid_x = left + (width - left - right) / 2
    mid_y = top + plot_h / 2
    parts = [f'<text class="chart-axis-label" x="{_num(mid_x)}" y="{_num(height - 6)}" '
             f'text-anchor="middle">{_e(x_label)}</text>']
    if y_label:
        parts.append(f'<text class="chart-axis-label" x="14" y="{_num(mid_y)}" '
                     f'text-anchor="middle" transform="rotate(-90 14 {_num(mid_y)})">'
                     f"{_e(y_label)}</text>")
    return parts


# --- Horizontal bars (top denied agents) --------------------------------------------------------


def horizontal_bars(chart_id: str, *, title: str, description: str, bars: Sequence[Bar],
                    x_label: str, y_label: str, color: str, empty_message: str,
                 width: int = WIDTH) -> SafeString:
    """One labelled horizontal bar per row, longest scale first as given."""
    if not bars or not any(b.value for b in bars):
        return empty_chart(chart_id, title=title, message=empty_message, width=width)
    row_h, top, left, right = 26, 44, 190, 56
    height = top + row_h * len(bars) + 44
    plot_w = width - left - right
    ticks = nice_ticks(max(b.value for b in bars))
    scale = plot_w / ticks[-1]
    plot_bottom = top + row_h * len(bars)
    body = ['<g class="axis x-axis">']
    for tick in ticks:
        x = left + tick * scale
        body.append(
            f'<line x1="{_num(x)}" x2="{_num(x)}" y1="{top}" y2="{plot_bottom}" '
            'stroke="#e4e7ec"/>'
            f'<text class="chart-tick" x="{_num(x)}" y="{plot_bottom + 14}" '
            f'text-anchor="middle">{_tick_text(tick)}</text>'
        )
    body.append("</g><g class=\"marks\">")
    max_chars = int((left - 10) / FONT_CHAR_WIDTH)
    for index, bar in enumerate(bars):
        y = top + index * row_h
        w = max(1.0, bar.value * scale) if bar.value else 0
        body.append(
            f'<g class="row" data-label="{_e(bar.label)}" data-value="{int(bar.value)}">'
            f'<text class="chart-label" x="{left - 8}" y="{y + 17}" text-anchor="end">'
            f"{_e(truncate(bar.label, max_chars))}</text>"
            f'<rect class="bar" x="{left}" y="{y + 5}" width="{_num(w)}" height="{row_h - 10}" '
            f'fill="{_e(color)}"><title>{_e(bar.label)}: {int(bar.value):,}</title></rect>'
            f'<text class="chart-value" x="{_num(left + w + 6)}" y="{y + 17}">'
            f"{int(bar.value):,}</text></g>"
        )
    body.append("</g>")
    body += _axis_labels(x_label, "", width=width, left=left, right=right, top=top,
                         plot_h=plot_bottom - top, height=height)
    if y_label:
        body.append(f'<text class="chart-axis-label" x="{left - 8}" y="36" text-anchor="end">'
                    f"{_e(y_label)}</text>")
    return _svg(chart_id, width, height, title, description, body)


# --- Deadlines (approvals waiting) --------------------------------------------------------------


def deadline_bars(chart_id: str, *, title: str, description: str, items: Sequence[Deadline],
                  x_label: str, empty_message: str,
                 width: int = WIDTH) -> SafeString:
    """Time left per waiting item as a bar from "now"; an overdue item is a red bar left of
    "now" (how long overdue) with the class ``breached``."""
    if not items:
        return empty_chart(chart_id, title=title, message=empty_message, width=width)
    row_h, top, left, right = 26, 44, 240, 96
    height = top + row_h * len(items) + 44
    overdue = [i for i in items if i.breached]
    left_hours = max((-i.seconds_left for i in overdue), default=0) / 3600
    right_hours = max((i.seconds_left for i in items if not i.breached), default=0) / 3600
    # The overdue side takes at most a quarter of the width, and only when something is overdue.
    plot_w = width - left - right
    overdue_w = plot_w * 0.25 if overdue else 0.0
    ahead_ticks = nice_ticks(max(right_hours, 1))
    ahead_scale = (plot_w - overdue_w) / ahead_ticks[-1]
    behind_scale = overdue_w / max(left_hours, 1 / 60) if overdue else 0.0
    now_x = left + overdue_w
    plot_bottom = top + row_h * len(items)
    body = ['<g class="axis x-axis">']
    for tick in ahead_ticks:
        x = now_x + tick * ahead_scale
        body.append(
            f'<line x1="{_num(x)}" x2="{_num(x)}" y1="{top}" y2="{plot_bottom}" '
            'stroke="#e4e7ec"/>'
            f'<text class="chart-tick" x="{_num(x)}" y="{plot_bottom + 14}" '
            f'text-anchor="middle">{"now" if tick == 0 else _tick_text(tick) + " h"}</text>'
        )
    if overdue:
        body.append(f'<text class="chart-tick chart-breached" x="{left}" '
                    f'y="{plot_bottom + 14}">overdue</text>')
    body.append(f'<line class="now" x1="{_num(now_x)}" x2="{_num(now_x)}" y1="{top - 4}" '
                f'y2="{plot_bottom}" stroke="#1d2330"/></g><g class="marks">')
    max_chars = int((left - 10) / FONT_CHAR_WIDTH)
    for index, item in enumerate(items):
        y = top + index * row_h
        hours = item.seconds_left / 3600
        if item.breached:
            w = min(overdue_w, max(2.0, -hours * behind_scale))
            x, color, css = now_x - w, "#c0312b", "bar deadline breached"
            text = f"overdue by {duration_text(item.seconds_left)}"
            text_x, anchor = now_x + 6, "start"
        else:
            w = max(2.0, hours * ahead_scale)
            x, color, css = now_x, "#2454d6", "bar deadline"
            text = f"{duration_text(item.seconds_left)} left"
            text_x, anchor = now_x + w + 6, "start"
        if item.note:
            text += f" · {item.note}"
        body.append(
            f'<g class="row{" breached" if item.breached else ""}" data-label="{_e(item.label)}" '
            f'data-seconds-left="{int(item.seconds_left)}">'
            f'<text class="chart-label" x="{left - 8}" y="{y + 17}" text-anchor="end">'
            f"{_e(truncate(item.label, max_chars))}</text>"
            f'<rect class="{css}" x="{_num(x)}" y="{y + 5}" width="{_num(w)}" '
            f'height="{row_h - 10}" fill="{color}"><title>{_e(item.label)}: {_e(text)}'
            "</title></rect>"
            f'<text class="chart-value{" chart-breached" if item.breached else ""}" '
            f'x="{_num(text_x)}" y="{y + 17}" text-anchor="{anchor}">{_e(text)}</text></g>'
        )
    body.append("</g>")
    body += _axis_labels(x_label, "", width=width, left=now_x, right=right, top=top,
                         plot_h=plot_bottom - top, height=height)
    return _svg(chart_id, width, height, title, description, body)


# --- Donut (fleet freshness) --------------------------------------------------------------------


def donut(chart_id: str, *, title: str, description: str, slices: Sequence[Slice],
          center_label: str, empty_message: str,
                 width: int = WIDTH) -> SafeString:
    """Parts of a whole as a ring (circles with dash arrays: no arc maths to get wrong at 100 %),
    with a legend giving each count and share."""
    total = sum(max(0, s.value) for s in slices)
    if total <= 0:
        return empty_chart(chart_id, title=title, message=empty_message, width=width)
    height, cx, cy, radius, ring = 220, 130, 122, 72, 30
    circumference = 2 * math.pi * radius
    body = [f'<circle cx="{cx}" cy="{cy}" r="{radius}" fill="none" stroke="#eef1f6" '
            f'stroke-width="{ring}"/>', f'<g class="marks" transform="rotate(-90 {cx} {cy})">']
    offset = 0.0
    for s in slices:
        if s.value <= 0:
            continue
        length = circumference * s.value / total
        body.append(
            f'<circle class="slice series-{_e(s.key)}" data-series="{_e(s.key)}" '
            f'data-value="{int(s.value)}" cx="{cx}" cy="{cy}" r="{radius}" fill="none" '
            f'stroke="{_e(s.color)}" stroke-width="{ring}" '
            f'stroke-dasharray="{_num(length)} {_num(circumference - length)}" '
            f'stroke-dashoffset="{_num(-offset)}"><title>{_e(s.label)}: {int(s.value):,} of '
            f"{total:,}</title></circle>"
        )
        offset += length
    body.append("</g>")
    body.append(f'<text class="chart-total" x="{cx}" y="{cy + 6}" text-anchor="middle">'
                f"{total:,}</text>"
                f'<text class="chart-tick" x="{cx}" y="{cy + 24}" text-anchor="middle">'
                f"{_e(center_label)}</text>")
    body.append('<g class="legend">')
    legend_x = cx + radius + ring / 2 + 24
    for index, s in enumerate(slices):
        y = 70 + index * 30
        share = round(100 * s.value / total)
        body.append(
            f'<g class="legend-item" data-series="{_e(s.key)}" data-value="{int(s.value)}">'
            f'<rect x="{_num(legend_x)}" y="{y - 11}" width="14" height="14" rx="3" '
            f'fill="{_e(s.color)}"/>'
            f'<text class="chart-label" x="{_num(legend_x + 22)}" y="{y}">{_e(s.label)}</text>'
            f'<text class="chart-value" x="{width - 12}" y="{y}" text-anchor="end">'
            f"{int(s.value):,} ({share} %)</text></g>"
        )
    body.append("</g>")
    return _svg(chart_id, width, height, title, description, body)
