"""Line charts as self-contained SVG (no script, no CDN, no matplotlib): loss curves, scores per training step."""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..run_files import read_metrics
from .html import SvgFigure, to_numpy

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
Series = Union[Sequence[float], Any, tuple[Any, Any]]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.2e}"


class LineChart(SvgFigure):
    """An SVG line chart (see ``line_chart``); ``.series`` holds the plotted ``(x, y)`` arrays."""

    def __init__(self, series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, x_label: str,
                 y_label: str, log_x: bool, width: int, height: int, markers: bool,
                 y_range: Optional[tuple[float, float]] = None, dashed: Sequence[str] = ()) -> None:
        self.series, self.title, self.x_label, self.y_label = series, title, x_label, y_label
        self.log_x, self.width, self.height, self.markers = log_x, width, height, markers
        self.y_range, self.dashed = y_range, set(dashed)

    def _xpos(self, x: np.ndarray) -> np.ndarray:
        return np.log10(1 + x) if self.log_x else x  # log10(1 + step) so step 0 fits on a log axis

    def fragment(self) -> str:
        """The inline ``<svg>`` (hover tooltips on points), for pages written by ``save``."""
        return '<div style="margin: 10px 0;">' + self.svg() + "</div>\n"

    def _repr_html_(self) -> str:
        """An ``<img>`` of the SVG as a data URI: JupyterLab strips inline ``<svg>`` from untrusted
        notebooks but keeps data-URI images, so the chart shows trusted or not (without tooltips)."""
        data = base64.b64encode(self.svg().encode("utf-8")).decode("ascii")
        return (f'<div style="margin: 10px 0;"><img src="data:image/svg+xml;base64,{data}" '
                f'alt="{html.escape(self.title or "chart")}" width="{self.width}" height="{self.height}"/></div>')

    def svg(self) -> str:
        """The chart as a standalone SVG document (no script, no external reference)."""
        frame = _Frame(self)
        w, h = self.width, self.height
        out = self.svg_head(w, h, "workbench-chart", self.title, font_size=12, title_size=15)
        out += self._axes(frame)
        colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(self.series)}
        # dashed series (e.g. "best head") are drawn last, so the curve they trace stays visible under them
        for name in sorted(self.series, key=lambda n: n in self.dashed):
            out += self._curve(frame, name, colors[name])
        if len(self.series) > 1:
            out += self._legend(frame, colors)
        out.append("</svg>")
        return "\n".join(out)

    def _axes(self, f: "_Frame") -> list[str]:
        """Grid, ticks, the plot frame and the axis labels."""
        out = []
        for t in nice_ticks(f.y0, f.y1):  # horizontal grid + y labels
            out.append(f'<line x1="{f.left}" x2="{f.left + f.pw}" y1="{f.py(t):.1f}" y2="{f.py(t):.1f}" '
                       'stroke="#e5e5e5"/>')
            out.append(f'<text x="{f.left - 6}" y="{f.py(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
        if self.log_x:
            decades = range(0, int(math.floor(f.x1)) + 1)
            xticks = [(math.log10(1 + 10 ** k), 10 ** k) for k in decades] + ([(0.0, 0)] if f.x0 <= 0 else [])
        else:
            xticks = [(t, t) for t in nice_ticks(f.x0, f.x1)]
        bottom = f.top + f.ph
        for pos, label in xticks:
            if f.x0 - 1e-9 <= pos <= f.x1 + 1e-9:
                out.append(f'<line x1="{f.px(pos):.1f}" x2="{f.px(pos):.1f}" y1="{bottom}" y2="{bottom + 4}" '
                           'stroke="#333"/>')
                out.append(f'<text x="{f.px(pos):.1f}" y="{bottom + 16}" text-anchor="middle">{_fmt(label)}</text>')
        out.append(f'<rect x="{f.left}" y="{f.top}" width="{f.pw}" height="{f.ph}" fill="none" stroke="#333"/>')
        x_label = self.x_label + (" (log scale)" if self.log_x else "")
        out.append(f'<text x="{f.left + f.pw / 2:.1f}" y="{self.height - 8}" text-anchor="middle">'
                   f'{html.escape(x_label)}</text>')
        out.append(f'<text transform="translate(14 {f.top + f.ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
                   f'{html.escape(self.y_label)}</text>')
        return out

    def _curve(self, f: "_Frame", name: str, color: str) -> list[str]:
        """One series: its line and, up to 200 points, a dot with a tooltip at each point."""
        x, y = self.series[name]
        dash = ' stroke-dasharray="6 4"' if name in self.dashed else ""
        pts = " ".join(f"{f.px(a):.1f},{f.py(b):.1f}" for a, b in zip(self._xpos(x), y))
        out = [f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{pts}">'
               f'<title>{html.escape(name)}</title></polyline>']
        if self.markers and len(x) <= 200:
            for a, b, xa in zip(self._xpos(x), y, x):
                out.append(f'<circle cx="{f.px(a):.1f}" cy="{f.py(b):.1f}" r="2.5" fill="{color}">'
                           f'<title>{html.escape(name)}: x={_fmt(float(xa))}, y={_fmt(float(b))}</title></circle>')
        return out

    def _legend(self, f: "_Frame", colors: dict[str, str]) -> list[str]:
        out = []
        x = self.width - f.right
        for i, (name, color) in enumerate(colors.items()):
            ly = f.top + 12 + 18 * i
            dash = ' stroke-dasharray="6 4"' if name in self.dashed else ""
            out.append(f'<line x1="{x + 10}" x2="{x + 30}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" '
                       f'stroke-width="2"{dash}/>')
            out.append(f'<text x="{x + 34}" y="{ly}">{html.escape(name[:24])}</text>')
        return out

    def __repr__(self) -> str:
        return f"LineChart({self.title!r}, series={list(self.series)})"


class _Frame:
    """Where a ``LineChart``'s plot area lies and its data-to-pixel maps ``px``/``py``."""

    def __init__(self, chart: LineChart) -> None:
        self.left, self.top, bottom = 64, 36, 46
        self.right = 16 + (190 if len(chart.series) > 1 else 0)
        xs = np.concatenate([chart._xpos(x) for x, _ in chart.series.values()])
        ys = np.concatenate([y for _, y in chart.series.values()])
        x0, x1 = float(xs.min()), float(xs.max())
        y0, y1 = float(ys.min()), float(ys.max())
        if chart.y_range is not None:   # widen to the fixed range (e.g. 0..1 for attention scores), never cut
            y0, y1 = min(y0, chart.y_range[0]), max(y1, chart.y_range[1])
        if x1 == x0:
            x0, x1 = x0 - 1, x1 + 1
        if y1 == y0:
            y0, y1 = y0 - (abs(y0) or 1) * 0.1, y1 + (abs(y1) or 1) * 0.1
        pad = (y1 - y0) * 0.05
        self.x0, self.x1, self.y0, self.y1 = x0, x1, y0 - pad, y1 + pad
        self.pw, self.ph = chart.width - self.left - self.right, chart.height - self.top - bottom

    def px(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * self.pw

    def py(self, v: float) -> float:
        return self.top + (1 - (v - self.y0) / (self.y1 - self.y0)) * self.ph


def _as_xy(name: str, s: Series) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(s, tuple) and len(s) == 2:
        x, y = to_numpy(s[0], f"x of {name!r}"), to_numpy(s[1], f"y of {name!r}")
    else:
        y = to_numpy(s, f"series {name!r}")
        x = np.arange(len(y), dtype=np.float64) if y.ndim == 1 else y
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"series {name!r} must be 1-D y values or an (x, y) pair of 1-D arrays, "
                         f"got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) != len(y):
        raise ValueError(f"series {name!r}: {len(x)} x values but {len(y)} y values")
    if len(y) == 0:
        raise ValueError(f"series {name!r} is empty")
    return x, y


def line_chart(series: Union[Mapping[str, Series], Series], title: str = "", x_label: str = "step",
               y_label: str = "", log_x: bool = False, width: int = 640, height: int = 360,
               markers: bool = True, y_range: Optional[tuple[float, float]] = None,
               dashed: Sequence[str] = ()) -> LineChart:
    """A line chart as inline SVG: shows in Jupyter without trust, saves as a standalone page.

    Args:
        series: ``{name: y}`` or ``{name: (x, y)}`` of 1-D numbers (tensors, arrays, lists), or one
            such series. E.g. ``{"best induction score": (steps, scores)}``.
        log_x: x on a log scale as ``log10(1 + x)``, so step 0 fits (for log-spaced checkpoints).
        markers: a dot with a hover tooltip at each point (up to 200 points per series).
        y_range: ``(lo, hi)`` the y axis covers at least (default: the data's range).
        dashed: names of series drawn dashed, on top of the others (e.g. a summary curve).
    """
    if not isinstance(series, Mapping):
        series = {y_label or "y": series}
    if not series:
        raise ValueError("line_chart needs at least one series")
    xy = {str(name): _as_xy(str(name), s) for name, s in series.items()}
    if log_x and any((x < 0).any() for x, _ in xy.values()):
        raise ValueError("log_x needs x >= 0")
    if y_range is not None and not y_range[0] < y_range[1]:
        raise ValueError(f"y_range must be (lo, hi) with lo < hi, got {y_range}")
    unknown = set(dashed) - set(xy)
    if unknown:
        raise ValueError(f"dashed names {sorted(unknown)} that are not series ({list(xy)})")
    return LineChart(xy, title, x_label, y_label, log_x, width, height, markers, y_range, dashed)


def metrics_chart(metrics: Union[str, Path, Sequence[Mapping[str, Any]]], keys: Sequence[str] = ("loss",),
                  x_key: str = "step", title: str = "training curves", **kwargs: Any) -> LineChart:
    """Curves from a run's ``metrics.jsonl`` (or its rows as dicts): one series per key in ``keys``.

    Rows missing a key (e.g. validation loss, logged less often) are skipped for that key only.
    A folder path means ``FOLDER/metrics.jsonl``.
    """
    rows = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    series = {}
    for key in keys:
        pts = [(r[x_key], r[key]) for r in rows if key in r and x_key in r and r[key] is not None]
        if pts:
            series[key] = ([p[0] for p in pts], [p[1] for p in pts])
    if not series:
        found = sorted({k for r in rows for k in r})
        raise KeyError(f"none of {list(keys)} is in the metrics (keys there: {found})")
    return line_chart(series, title=title, x_label=x_key, y_label=kwargs.pop("y_label", ", ".join(series)),
                      **kwargs)


def head_scores_chart(steps: Any, scores: Any = None, top: int = 3, score: str = "induction",
                      title: Optional[str] = None, y_label: Optional[str] = None, width: int = 880,
                      height: int = 440, **kwargs: Any) -> LineChart:
    """The best head's score at each step, plus the curves of the ``top`` heads that end highest.

    Args:
        steps: ``n_steps`` training steps (e.g. ``store.steps`` of a recording); or a table
            (pandas DataFrame) with columns ``step, layer, head_index`` and ``score``, as returned by
            ``workbench.analysis.heads.scores_across_steps`` (then leave ``scores`` out).
        scores: ``[n_steps, n_layers, n_heads]`` (or ``[n_steps, n_heads]``), e.g. the induction
            score of every head at every recorded step.
        score: the table column to plot. Scores other than ``entropy`` are attention probabilities,
            so the y axis spans at least 0..1.
    Heads are named ``L{layer}.H{head}``, as in ``detect_heads`` notes and ``workbench report``.
    """
    layers = None
    if scores is None:
        if not hasattr(steps, "columns"):
            raise TypeError("pass (steps, scores[n_steps, n_layers, n_heads]) or a table with step, layer, "
                            "head_index columns")
        steps, scores, layers = _table_to_array(steps, score)
    arr = to_numpy(scores, "scores")
    if arr.ndim == 2:
        arr = arr[:, None]
    if arr.ndim != 3 or arr.shape[0] != len(steps):
        raise ValueError(f"scores must be [n_steps, n_layers, n_heads] with n_steps = {len(steps)}, "
                         f"got shape {tuple(arr.shape)}")
    layers = list(range(arr.shape[1])) if layers is None else layers
    x = np.asarray(list(steps), dtype=np.float64)
    flat = arr.reshape(len(x), -1)
    series: dict[str, Series] = {"best head": (x, flat.max(1))}
    n_heads = arr.shape[2]
    for idx in np.argsort(-flat[-1], kind="stable")[:max(top, 0)]:
        series[f"L{layers[idx // n_heads]}.H{idx % n_heads}"] = (x, flat[:, idx])
    kwargs.setdefault("y_range", None if score == "entropy" else (0.0, 1.0))
    kwargs.setdefault("dashed", ("best head",))
    return line_chart(series, title=title or f"{score.replace('_', ' ')} score per step",
                      y_label=y_label or score, width=width, height=height, **kwargs)


def _table_to_array(table: Any, score: str) -> tuple[list[int], np.ndarray, list[int]]:
    """``(steps, [n_steps, n_layers, n_heads], layers)`` from a long table with ``step, layer, head_index, score`` columns.

    A table from before the ``head`` column was renamed ``head_index`` works too.
    """
    head_col = "head_index" if "head_index" in table.columns else "head"
    missing = [c for c in ("step", "layer", head_col, score) if c not in table.columns]
    if missing:
        raise KeyError(f"the table lacks columns {missing}; it has {list(table.columns)}")
    steps = sorted(int(s) for s in set(table["step"]))
    layers = sorted(int(v) for v in set(table["layer"]))
    heads = sorted(int(v) for v in set(table[head_col]))
    arr = np.full((len(steps), len(layers), len(heads)), np.nan)
    si, li, hi = ({v: i for i, v in enumerate(vs)} for vs in (steps, layers, heads))
    for st, la, he, val in zip(table["step"], table["layer"], table[head_col], table[score]):
        arr[si[int(st)], li[int(la)], hi[int(he)]] = float(val)
    if np.isnan(arr).any():
        raise ValueError("the table does not hold every (step, layer, head) once: filter it to one score per head")
    return steps, arr, layers
