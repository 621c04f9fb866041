"""Visualizations that render with no network: circuitsvis widgets with the bundle inlined, plain HTML, SVG.

Every function returns a figure with ``_repr_html_`` (shows in Jupyter) and
``save(path)`` (a standalone HTML page). ``Page(*figures)`` puts several on one
page, with headings and captions between them, and the ~1.3 MB circuitsvis bundle inlined once.
See docs/viz.md.
"""
from .attention import attention_heads, attention_patterns, layer_attention, layer_pattern, sharpest_head
from .circuit_graph import CircuitGraph, circuit_graph
from .heatmap import Heatmap, heatmap, patching_heatmap
from .html import (Caption, CircuitsVisWidget, Figure, Heading, Page, circuitsvis_bundle, configure, escape_token,
                   visible_token)
from .plots import LineChart, head_scores_chart, line_chart, metrics_chart, nice_ticks
from .tokens import ColoredTokens, colored_tokens, colored_tokens_multi, logit_lens_tokens

__all__ = ["attention_heads", "attention_patterns", "layer_attention", "layer_pattern", "sharpest_head",
           "visible_token", "Caption", "CircuitsVisWidget", "Figure", "Heading", "Page", "circuitsvis_bundle",
           "configure", "escape_token", "LineChart", "line_chart", "metrics_chart", "nice_ticks", "ColoredTokens",
           "colored_tokens", "colored_tokens_multi", "head_scores_chart", "logit_lens_tokens", "CircuitGraph",
           "circuit_graph", "Heatmap", "heatmap", "patching_heatmap"]
