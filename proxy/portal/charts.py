"""Bar charts as inline SVG, drawn on the server from GET /analytics's `periods`.

No script draws them and nothing is fetched: the page's Content-Security-Policy allows
neither inline styles nor other hosts, so the SVG uses presentation attributes
(`fill`), and it scales to the page's width through its viewBox. Every bar carries its
period and value in a <title> (a tooltip, and what a screen reader reads) and in
`data-value`, which the browser tests read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape

WIDTH, HEIGHT, TOP, BOTTOM = 600, 160, 22, 24
PALETTE = ("#2563eb", "#dc2626", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")


def chart(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    shown: Callable[[float], str] = lambda v: f"{v:,.0f}",
    *,
    ceiling: float | None = None,
    legend: bool = False,
    empty: str = "nothing in this range",
) -> str:
    """A figure: `title`, then one bar per label, the series stacked (with a legend
    when asked or when there are several). `ceiling` fixes the top of the scale (1 for
    a ratio)."""
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    top = ceiling or max(totals, default=0) or 1
    step = WIDTH / max(1, len(labels))
    bars = []
    for i, label in enumerate(labels):
        base = float(HEIGHT - BOTTOM)
        for n, (name, values) in enumerate(series.items()):
            value = values[i]
            if value <= 0:
                continue
            height = (HEIGHT - TOP - BOTTOM) * value / top
            base -= height
            what = f"{label}: {shown(value)}" + (f" {name}" if len(series) > 1 else "")
            bars.append(
                f'<rect x="{i * step + step * 0.1:.1f}" y="{base:.1f}" width="{step * 0.8:.1f}" '
                f'height="{height:.1f}" fill="{PALETTE[n % len(PALETTE)]}" '
                f'data-value="{value}"><title>{escape(what)}</title></rect>'
            )
    scale = f'<text x="0" y="16" class="axis">{escape(shown(top))}</text>' if bars else ""
    axis = (
        f'{scale}<line x1="0" y1="{HEIGHT - BOTTOM}" x2="{WIDTH}" y2="{HEIGHT - BOTTOM}" '
        'stroke="#9ca3af"/>'
    )
    if labels:
        axis += (
            f'<text x="0" y="{HEIGHT - 5}" class="axis">{escape(labels[0])}</text>'
            f'<text x="{WIDTH}" y="{HEIGHT - 5}" text-anchor="end" class="axis">'
            f"{escape(labels[-1])}</text>"
        )
    key = ""
    if legend or len(series) > 1:
        key = (
            '<p class="legend">'
            + "".join(
                f'<span><svg width="10" height="10" aria-hidden="true">'
                f'<rect width="10" height="10" '
                f'fill="{PALETTE[n % len(PALETTE)]}"/></svg> {escape(name)}</span>'
                for n, name in enumerate(series)
            )
            + "</p>"
        )
    nothing = "" if bars else f'<p class="muted">{escape(empty)}</p>'
    return (
        f'<figure class="chart"><figcaption>{escape(title)}</figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">'
        f"{axis}{''.join(bars)}</svg>{key}{nothing}</figure>"
    )
