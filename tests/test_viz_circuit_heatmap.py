"""Heatmaps of patching results: labelled axes, a hover value per cell, a symmetric colour scale, safe labels."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
import torch

from workbench import viz


def cells(svg: str) -> list[tuple[str, str]]:
    return re.findall(r'<rect [^>]*fill="(#[0-9a-f]{6})" class="cell"><title>([^<]*)</title>', svg)


def test_layer_pos_heatmap_has_a_labelled_cell_per_value():
    values = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.25, -2.0]])
    fig = viz.patching_heatmap(values, ("layer", "pos"), tokens=["<s>", "def", " f"], title="resid_pre")
    svg = fig.svg()
    ET.fromstring(svg)                                                    # well-formed XML
    found = cells(svg)
    assert len(found) == 6
    assert found[1][1] == "L0, 1 &#x27;def&#x27;: metric -1" and found[3][1].endswith(": metric 2")
    assert found[2][0] == "#f7f7f7"                                       # 0 is white
    assert found[3][0] == "#2166ac" and found[5][0] == "#b2182b"          # +max blue, -max red: symmetric
    for label in (">position<", ">layer<", ">resid_pre<", ">L1<"):
        assert label in svg


def test_layer_head_and_head_pos():
    h = viz.patching_heatmap(torch.randn(3, 4), ("layer", "head"))
    assert ">H3<" in h.svg() and ">head<" in h.svg() and len(cells(h.svg())) == 12
    by_pos = torch.randn(3, 5, 4)                                         # [layer, pos, head]
    hp = viz.patching_heatmap(by_pos[1].T, ("head", "pos"))
    assert len(cells(hp.svg())) == 20
    with pytest.raises(ValueError, match=r"values\[layer\]\.T"):
        viz.patching_heatmap(by_pos, ("head", "pos"))
    with pytest.raises(ValueError, match="axes must name"):
        viz.patching_heatmap(by_pos[0], ("layer", "token"))


def test_token_labels_are_escaped_and_saved_pages_need_nothing(tmp_path):
    fig = viz.patching_heatmap(torch.randn(2, 2), tokens=["<script>alert(1)</script>", "&amp;"])
    assert "<script>alert" not in fig.svg()
    page = fig.save(tmp_path / "h.html").read_text()
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    assert fig.save(tmp_path / "h.svg").read_text().startswith("<svg")
    with pytest.raises(ValueError, match="NaN"):
        viz.heatmap([[1.0, float("nan")]])
    with pytest.raises(ValueError, match="3 tokens for 2 positions"):
        viz.patching_heatmap(torch.randn(2, 2), tokens=["a", "b", "c"])
