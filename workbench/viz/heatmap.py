"""Heatmaps as self-contained SVG (no script, no CDN): patching results by layer, head and position.

``patching_heatmap(get_act_patch_resid_pre(...), ("layer", "pos"), tokens=str_tokens)`` draws a
``[layer, pos]`` sweep with the tokens along x; ``("layer", "head")`` and ``("head", "pos")`` work
the same way. Each cell carries its value as an SVG ``<title>``, which browsers show on hover.
Colours diverge around ``center`` (0 by default): blue above, red below, white at the centre, on a
scale symmetric in ``max |value - center|`` so that equal colours mean equal magnitudes.
"""
from __future__ import annotations

import html
from typing import Any, Optional, Sequence

import numpy as np

from .html import SvgFigure, str_tokens, to_numpy

BLUE, WHITE, RED = (33, 102, 172), (247, 247, 247), (178, 24, 43)
AXIS_NAMES = {"layer": "layer", "head": "head", "pos": "position"}


def _colour(t: float) -> str:
    """``t`` in [-1, 1] -> a hex colour between red (-1), white (0) and blue (1)."""
    t = max(-1.0, min(1.0, t))
    end = BLUE if t >= 0 else RED
    rgb = [round(w + abs(t) * (e - w)) for w, e in zip(WHITE, end)]
    return "#%02x%02x%02x" % tuple(rgb)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class Heatmap(SvgFigure):
    """An SVG heatmap (see ``heatmap``); ``.values`` is the ``[rows, cols]`` array drawn."""

    def __init__(self, values: np.ndarray, x_labels: list[str], y_labels: list[str], x_label: str, y_label: str,
                 title: str, value_label: str, center: float) -> None:
        self.values, self.x_labels, self.y_labels = values, x_labels, y_labels
        self.x_label, self.y_label, self.title = x_label, y_label, title
        self.value_label, self.center = value_label, center

    def fragment(self) -> str:
        return '<div style="margin: 10px 0; overflow-x: auto;">' + self.svg() + "</div>\n"

    def svg(self) -> str:
        rows, cols = self.values.shape
        cw = int(np.clip(640 / max(cols, 1), 12, 44))
        ch = int(np.clip(360 / max(rows, 1), 12, 34))
        rotate = max((len(s) for s in self.x_labels), default=0) > 3
        left = 14 + 7 * max((len(s) for s in self.y_labels), default=1) + 22
        top = 34 if self.title else 12
        bottom = (12 + 6 * min(max((len(s) for s in self.x_labels), default=1), 16) if rotate else 22) + 22
        legend_w = 90
        w, h = left + cols * cw + legend_w, top + rows * ch + bottom
        w = max(w, int(7.5 * len(self.title)) + 20)         # room for the title
        span = float(np.max(np.abs(self.values - self.center))) or 1.0
        out = self.svg_head(w, h, "workbench-heatmap", self.title, font_size=11, title_size=14)
        for i in range(rows):
            for j in range(cols):
                v = float(self.values[i, j])
                tip = f"{self.y_labels[i]}, {self.x_labels[j]}: {self.value_label} {_fmt(v)}"
                out.append(f'<rect x="{left + j * cw}" y="{top + i * ch}" width="{cw}" height="{ch}" '
                           f'fill="{_colour((v - self.center) / span)}" class="cell"><title>{html.escape(tip)}</title></rect>')
        out.append(f'<rect x="{left}" y="{top}" width="{cols * cw}" height="{rows * ch}" fill="none" stroke="#555"/>')
        for i, lab in enumerate(self.y_labels):
            out.append(f'<text x="{left - 4}" y="{top + i * ch + ch / 2 + 4:.1f}" text-anchor="end">{html.escape(lab)}</text>')
        for j, lab in enumerate(self.x_labels):
            x, y = left + j * cw + cw / 2, top + rows * ch + 12
            if rotate:
                out.append(f'<text transform="translate({x + 3:.1f} {y - 4}) rotate(-50)" text-anchor="end">'
                           f'{html.escape(lab[:16])}</text>')
            else:
                out.append(f'<text x="{x:.1f}" y="{y}" text-anchor="middle">{html.escape(lab)}</text>')
        out.append(f'<text x="{left + cols * cw / 2:.1f}" y="{h - 6}" text-anchor="middle">{html.escape(self.x_label)}</text>')
        out.append(f'<text transform="translate(12 {top + rows * ch / 2:.1f}) rotate(-90)" text-anchor="middle">'
                   f'{html.escape(self.y_label)}</text>')
        out += self._legend(left + cols * cw + 18, top, min(rows * ch, 160), span)
        out.append("</svg>")
        return "\n".join(out)

    def _legend(self, x: float, y: float, height: float, span: float) -> list[str]:
        """A colour bar: ``center + span`` at the top, ``center - span`` at the bottom."""
        n = 20
        out = [f'<rect x="{x}" y="{y + k * height / n:.1f}" width="14" height="{height / n + 0.5:.1f}" '
               f'fill="{_colour(1 - 2 * (k + 0.5) / n)}"/>' for k in range(n)]
        out.append(f'<rect x="{x}" y="{y}" width="14" height="{height:.1f}" fill="none" stroke="#555"/>')
        for frac, v in ((0, self.center + span), (0.5, self.center), (1, self.center - span)):
            out.append(f'<text x="{x + 18}" y="{y + frac * height + 4:.1f}">{_fmt(v)}</text>')
        out.append(f'<text x="{x}" y="{y + height + 16:.1f}" font-size="10">{html.escape(self.value_label[:14])}</text>')
        return out

    def __repr__(self) -> str:
        return f"Heatmap({self.title!r}, {self.values.shape[0]} x {self.values.shape[1]})"


def heatmap(values: Any, x_labels: Optional[Sequence[Any]] = None, y_labels: Optional[Sequence[Any]] = None,
            x_label: str = "", y_label: str = "", title: str = "", value_label: str = "value",
            center: float = 0.0) -> Heatmap:
    """A ``[rows, cols]`` heatmap with labelled axes; hover a cell for its row, column and value.

    ``values``: a 2-D tensor, array or nested list of finite numbers; ``x_labels``/``y_labels``: one
    label per column/row (default their indices).
    """
    arr = to_numpy(values, "values")
    if arr.ndim != 2:
        raise ValueError(f"heatmap values must be 2-D [rows, cols], got shape {tuple(arr.shape)}; "
                         "for a [layer, pos, head] sweep pass one layer, e.g. values[layer].T for [head, pos]")
    if arr.size == 0:
        raise ValueError("heatmap values are empty")
    xl = [str(v) for v in (range(arr.shape[1]) if x_labels is None else x_labels)]
    yl = [str(v) for v in (range(arr.shape[0]) if y_labels is None else y_labels)]
    if len(xl) != arr.shape[1] or len(yl) != arr.shape[0]:
        raise ValueError(f"{len(yl)} row labels and {len(xl)} column labels for values of shape {tuple(arr.shape)}")
    return Heatmap(arr, xl, yl, x_label, y_label, title, value_label, float(center))


def _axis_labels(axis: str, n: int, tokens: Optional[list[str]]) -> list[str]:
    if axis == "layer":
        return [f"L{i}" for i in range(n)]
    if axis == "head":
        return [f"H{i}" for i in range(n)]
    if tokens is not None:
        if len(tokens) != n:
            raise ValueError(f"{len(tokens)} tokens for {n} positions")
        return [f"{i} {t!r}"[:18] if len(t) else str(i) for i, t in enumerate(tokens)]
    return [str(i) for i in range(n)]


def patching_heatmap(values: Any, axes: Sequence[str] = ("layer", "pos"), tokens: Optional[Sequence[Any]] = None,
                     title: str = "", value_label: str = "metric", center: float = 0.0) -> Heatmap:
    """A patching result drawn with its axes named: ``axes`` is ``("layer", "pos")``,
    ``("layer", "head")`` or ``("head", "pos")`` (rows, then columns).

    ``tokens``: the prompt's token strings (e.g. ``model.to_str_tokens(prompt)``), shown along a
    ``pos`` axis. E.g. ``patching_heatmap(get_act_patch_resid_pre(model, corr, cache, metric),
    tokens=model.to_str_tokens(clean[0]))``.
    """
    axes = tuple(axes)
    if len(axes) != 2 or any(a not in AXIS_NAMES for a in axes):
        raise ValueError(f"axes must name rows and columns from {sorted(AXIS_NAMES)}, e.g. ('layer', 'pos'); got {axes}")
    arr = to_numpy(values, "values")
    if arr.ndim != 2:
        raise ValueError(f"values must be 2-D for axes {axes}, got shape {tuple(arr.shape)}; for a "
                         "[layer, pos, head] sweep pass values[layer].T with axes=('head', 'pos')")
    toks = str_tokens(tokens, "tokens") if tokens is not None else None
    return heatmap(arr, _axis_labels(axes[1], arr.shape[1], toks), _axis_labels(axes[0], arr.shape[0], toks),
                   AXIS_NAMES[axes[1]], AXIS_NAMES[axes[0]], title, value_label, center)
