"""A small line chart drawn with Pillow, so plots need no matplotlib."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw

from ddcli.viz._canvas import INK, PAPER, font

# Colour-blind-safe qualitative palette (Okabe-Ito), in drawing order.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#F0E442")
GRID = "#DDDDDD"
MARK = "#888888"
_SUPERSAMPLE = 2

Series = Sequence[float] | tuple[Sequence[float], Sequence[float]]


def line_chart(
    series: Mapping[str, Series],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    size: tuple[int, int] = (640, 360),
    marks: Sequence[tuple[float, str]] = (),
    y_min: float | None = None,
    y_max: float | None = None,
    points: bool | None = None,
) -> Image.Image:
    """Draw one or more series as lines on shared axes.

    Args:
        series: name -> ys (plotted at x = 0, 1, ...) or name -> (xs, ys). Non-finite
            values break the line. A legend is drawn when there is more than one series.
        title: text above the plot.
        x_label: axis caption under the x axis.
        y_label: axis caption above the y axis.
        size: (width, height) of the image in pixels.
        marks: (x, label) pairs drawn as dashed vertical lines, e.g. pass boundaries.
        y_min: force the lower end of the y axis (e.g. 0 for rates); default: from the data.
        y_max: force the upper end of the y axis; default: from the data.
        points: draw a dot at every value; default: when a series has at most 60 points.

    Returns:
        An RGB ``PIL.Image``; save it with ``ddcli.viz.save_png``.

    Example:
        >>> from ddcli.viz import line_chart
        >>> img = line_chart({"test acc": ([0, 100, 200], [0.1, 0.8, 0.9])},
        ...                  x_label="iteration", y_min=0, y_max=1)
        >>> img.size
        (640, 360)
    """
    lines = {name: _xy(s) for name, s in series.items()}
    xs_all = [x for xs, _ in lines.values() for x in xs if math.isfinite(x)]
    ys_all = [y for _, ys in lines.values() for y in ys if math.isfinite(y)]
    x_lo, x_hi = _span(min(xs_all, default=0.0), max(xs_all, default=1.0))
    y_ticks = _nice_ticks(min(ys_all, default=0.0) if y_min is None else y_min,
                          max(ys_all, default=1.0) if y_max is None else y_max)
    y_lo = y_ticks[0] if y_min is None else y_min
    y_hi = y_ticks[-1] if y_max is None else y_max
    y_ticks = [t for t in y_ticks if y_lo - 1e-12 <= t <= y_hi + 1e-12]
    x_ticks = [t for t in _nice_ticks(x_lo, x_hi, inner=True) if x_lo <= t <= x_hi]

    # Drawn at twice the size and shrunk with a Lanczos filter: smooth lines, same bytes
    # every time (no randomness and no system fonts anywhere).
    u = _SUPERSAMPLE
    width, height = size[0] * u, size[1] * u
    small, big = font(12 * u), font(14 * u)
    img = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(img)
    y_fmt, x_fmt = _formatter(y_ticks), _formatter(x_ticks)
    left = 12 * u + int(max((draw.textlength(y_fmt(t), font=small) for t in y_ticks), default=0))
    top = (14 + (22 if title or len(lines) > 1 else 0) + (16 if y_label else 0)) * u
    # the legend sits right of the title, or on a row of its own when both don't fit
    legend_w = sum(draw.textlength(n, font=small) + 28 * u for n in lines) if len(lines) > 1 else 0
    title_w = draw.textlength(title, font=big) if title else 0
    legend_y = 8 * u
    if legend_w and title_w + 16 * u + legend_w > width - 24 * u:
        legend_y = 28 * u
        top += 20 * u
    right, bottom = width - 16 * u, height - (26 + (16 if x_label else 0)) * u
    if right - left < 20 * u or bottom - top < 20 * u:
        raise ValueError(f"chart size {size} is too small for its labels")

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)

    for t in y_ticks:
        draw.line([(left, py(t)), (right, py(t))], fill=GRID, width=u)
        draw.text((left - 6 * u, py(t)), y_fmt(t), fill=INK, font=small, anchor="rm")
    for t in x_ticks:
        draw.line([(px(t), bottom), (px(t), bottom + 4 * u)], fill=INK, width=u)
        draw.text((px(t), bottom + 6 * u), x_fmt(t), fill=INK, font=small, anchor="ma")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=INK, width=u)
    for x, label in marks:
        if x_lo <= x <= x_hi:
            for y0 in range(top, bottom, 8 * u):  # dashed: 4 on, 4 off
                draw.line([(px(x), y0), (px(x), min(y0 + 4 * u, bottom))], fill=MARK, width=u)
            draw.text((px(x) + 3 * u, top + 2 * u), label, fill=MARK, font=small, anchor="la")

    if title:
        draw.text((8 * u, 6 * u), title, fill=INK, font=big, anchor="la")
    if y_label:
        draw.text((8 * u, top - 6 * u), y_label, fill=INK, font=small, anchor="ld")
    if x_label:
        draw.text(((left + right) / 2, height - 6 * u), x_label, fill=INK, font=small,
                  anchor="md")

    legend_x = right
    for i, (name, (xs, ys)) in reversed(list(enumerate(lines.items()))):
        colour = PALETTE[i % len(PALETTE)]
        show_points = points if points is not None else len(ys) <= 60
        r = 2.5 * u
        for segment in _finite_runs(xs, ys):
            pts = [(px(x), py(y)) for x, y in segment]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2 * u, joint="curve")
            if show_points or len(pts) == 1:
                for cx, cy in pts:
                    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        if len(lines) > 1:
            tw = draw.textlength(name, font=small)
            draw.text((legend_x, legend_y), name, fill=INK, font=small, anchor="ra")
            draw.rectangle([legend_x - tw - 16 * u, legend_y + 2 * u, legend_x - tw - 6 * u,
                            legend_y + 12 * u], fill=colour)
            legend_x -= tw + 28 * u
    return img.resize(size, Image.Resampling.LANCZOS)


def _xy(s: Series) -> tuple[list[float], list[float]]:
    if isinstance(s, tuple) and len(s) == 2 and all(hasattr(part, "__len__") for part in s):
        xs, ys = (list(map(float, s[0])), list(map(float, s[1])))
        if len(xs) != len(ys):
            raise ValueError(f"series has {len(xs)} x values but {len(ys)} y values")
        return xs, ys
    ys = [float(v) for v in s]
    return [float(i) for i in range(len(ys))], ys


def _finite_runs(xs: list[float], ys: list[float]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys):
        if math.isfinite(x) and math.isfinite(y):
            runs[-1].append((x, y))
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def _span(lo: float, hi: float) -> tuple[float, float]:
    if hi > lo:
        return lo, hi
    d = abs(lo) * 0.1 or 1.0
    return lo - d, hi + d


def _nice_ticks(lo: float, hi: float, n: int = 5, inner: bool = False) -> list[float]:
    """About ``n`` round tick values; they enclose [lo, hi] unless ``inner``."""
    lo, hi = _span(lo, hi)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) if inner else math.floor(lo / step + 1e-9)
    last = math.floor(hi / step + 1e-9) if inner else math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _formatter(ticks: Sequence[float]):
    if len(ticks) < 2:
        return lambda v: f"{v:g}"
    step = abs(ticks[1] - ticks[0])
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(step / 10 ** math.floor(math.log10(step)) - 2.5) < 1e-6:
        decimals += 1
    return lambda v: f"{v:.{decimals}f}"
