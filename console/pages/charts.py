"""Charts drawn on the server as SVG: no chart library, no script, readable by screen readers (a
title, a description and, beside every chart, the table it was drawn from)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10.0 * magnitude


def bar_chart(
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    unit: str = "",
    width: int = 720,
    height: int = 240,
    bad: Sequence[bool] | None = None,
    label_every: int | None = None,
) -> Markup:
    """A vertical bar chart of `values` (one bar a label); `bad` marks bars drawn in red."""
    left, bottom, top, right = 48, 28, 12, 8
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _nice_max(max(values, default=0))
    n = max(len(values), 1)
    slot = plot_w / n
    bar_w = max(slot * 0.7, 1)
    every = label_every or max(1, n // 12)
    parts = [
        f'<svg class="chart" role="img" aria-labelledby="t-{id(values)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="t-{id(values)}">{escape(title)}</title>',
    ]
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        tick = peak * i / 4
        tick_text = f"{tick:g}"
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{tick_text}</text>')
    for i, (label, value) in enumerate(zip(labels, values, strict=False)):
        h = plot_h * (value / peak) if peak else 0
        x = left + slot * i + (slot - bar_w) / 2
        y = top + plot_h - h
        cls = "bar bad" if bad and i < len(bad) and bad[i] else "bar"
        parts.append(
            f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
            f"<title>{escape(label)}：{value:g}{escape(unit)}</title></rect>"
        )
        if i % every == 0:
            parts.append(
                f'<text class="label" x="{x + bar_w / 2:.1f}" y="{height - 10}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def share_bar(title: str, parts: Sequence[tuple[str, float]], *, width: int = 720, height: int = 36) -> Markup:
    """One horizontal bar split into shares (e.g. 好评 / 中评 / 差评), each with its own colour class."""
    total = sum(value for _, value in parts) or 1
    x = 0.0
    out = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    for i, (label, value) in enumerate(parts):
        w = width * value / total
        out.append(
            f'<rect class="share s{i}" x="{x:.1f}" y="0" width="{w:.1f}" height="{height}">'
            f"<title>{escape(label)}：{value:g}（{100 * value / total:.1f}%）</title></rect>"
        )
        x += w
    out.append("</svg>")
    return Markup("".join(out))
