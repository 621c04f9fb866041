"""workbench.viz: offline HTML (bundle inlined, no external script), escaping, shapes, sources, charts."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from workbench import viz
from workbench.errors import DamagedFileError
from workbench.viz.html import ZWSP, circuitsvis_bundle

NASTY = ["<script>alert(1)</script>", "</div>", "&amp;", "<img src=x onerror=alert(2)>", " a", "->"]


def causal_pattern(heads: int = 3, pos: int = 6, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, pos, pos, generator=g)
    return scores.masked_fill(torch.ones(pos, pos).triu(1).bool(), float("-inf")).softmax(-1)


def widget_props(html: str) -> list[dict]:
    """The props JSON of every circuitsvis widget on a page, as the browser's JavaScript sees it."""
    return [json.loads(m) for m in re.findall(r"props = (\{.*?\}), tries = 0;", html)]


def assert_offline(html: str) -> None:
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I), "a script is loaded from elsewhere"
    assert not re.search(r"<link[^>]*\bhref\s*=", html, re.I), "a stylesheet is loaded from elsewhere"
    for host in ("unpkg.com", "googleapis", "google.com", "cdn.jsdelivr"):
        assert host not in html
    assert not re.search(r"""import[^;]*from\s*["']https?:""", html)
    assert "sourceMappingURL" not in html


def assert_inert(token: str) -> None:
    """No tag can start and no entity can be decoded when ``token`` goes through innerHTML."""
    assert not re.search(r"<[A-Za-z/!?]", token), token
    assert not re.search(r"&[A-Za-z#]", token), token


# -- the bundle and offline rendering -------------------------------------------------------------
def test_bundle_is_inlined_once_per_page_and_nothing_is_fetched():
    p = causal_pattern()
    page = viz.Page(viz.attention_heads(p, NASTY, layer=1), viz.attention_patterns(p, NASTY),
                    viz.colored_tokens_multi(NASTY, torch.randn(6, 2)), viz.line_chart([1.0, 2.0]))
    html = page.to_html()
    assert_offline(html)
    assert html.count("var CircuitsVis=") == 1
    assert circuitsvis_bundle()[:2000] in html and len(circuitsvis_bundle()) > 1_000_000
    assert html.count("window.CircuitsVis.render(") == 3
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    # the bundle itself cannot close the inline <script> early
    assert "</script" not in circuitsvis_bundle().lower()


def test_repr_html_each_output_works_alone_unless_configured_once():
    w = viz.attention_heads(causal_pattern(), NASTY)
    try:
        viz.configure("always")
        assert "var CircuitsVis=" in w._repr_html_() and "var CircuitsVis=" in w._repr_html_()
        viz.configure("once")
        first, second = w._repr_html_(), w._repr_html_()
        assert "var CircuitsVis=" in first and "var CircuitsVis=" not in second
        assert "window.CircuitsVis.render(" in second
        assert len(second) < 10_000 < len(first)
        with pytest.raises(ValueError, match="inline_bundle"):
            viz.configure("sometimes")
    finally:
        viz.configure("always")
    assert_offline(w._repr_html_())


def test_svg_and_plain_html_figures_need_no_bundle():
    for fig in (viz.line_chart({"loss": [3.0, 2.0, 1.5]}), viz.colored_tokens(["a", "b"], [0.1, 0.9])):
        assert not fig.needs_bundle
        assert "CircuitsVis" not in fig.to_html() and "<script" not in fig.to_html()


def test_save_writes_a_standalone_page(tmp_path):
    out = viz.attention_heads(causal_pattern(), NASTY).save(tmp_path / "sub" / "attn.html")
    text = out.read_text(encoding="utf-8")
    assert out.name == "attn.html" and "var CircuitsVis=" in text and "<title>attn</title>" in text
    assert_offline(text)


# -- escaping -------------------------------------------------------------------------------------
def test_tokens_reach_circuitsvis_inert_but_readable():
    p = causal_pattern()
    html = viz.Page(viz.attention_heads(p, NASTY, head_names=["</script><b>x", "h1", "h2"]),
                    viz.colored_tokens_multi(NASTY, torch.randn(6, 1))).to_html()
    for raw in ("<script>alert(1)</script>", "<img src=x"):  # "</div>" is checked in the props below
        assert raw not in html
    heads, multi = widget_props(html)
    for props in (heads, multi):
        for tok in props["tokens"]:
            assert_inert(tok)
    assert [t.replace(ZWSP, "") for t in multi["tokens"]] == NASTY  # shown exactly as the tokens read
    # heatmap labels lose their whitespace in circuitsvis, so spaces are drawn as "·"
    assert [t.replace(ZWSP, "") for t in heads["tokens"]] == [t.replace(" ", "\u00b7") for t in NASTY]
    # head names are React text (escaped by React); only the JSON must not close the <script>
    assert widget_props(html)[0]["attentionHeadNames"][0] == "</script><b>x"


def test_plain_html_tokens_are_entity_escaped():
    fig = viz.colored_tokens(NASTY, np.arange(6.0), title="<b>probe</b>")
    html = fig.fragment()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;/div&gt;" in html
    assert "&amp;amp;" in html and "&lt;b&gt;probe&lt;/b&gt;" in html
    assert "<script>alert" not in html and "<img" not in html and "<b>" not in html


def test_escape_token_keeps_ordinary_tokens():
    assert viz.escape_token(" def") == " def" and viz.escape_token("a->b") == "a->b"
    assert viz.escape_token("<x").replace(ZWSP, "") == "<x"


# -- shapes and bad input -------------------------------------------------------------------------
def test_attention_accepts_batched_and_unbatched_patterns():
    p = causal_pattern(batch=2)
    a = widget_props(viz.attention_heads(p, NASTY, batch_index=1).fragment())[0]
    b = widget_props(viz.attention_heads(p[1], NASTY).fragment())[0]
    assert a["attention"] == b["attention"]
    assert np.allclose(a["attention"], p[1].numpy(), atol=1e-4)
    assert a["attentionHeadNames"] == ["H0", "H1", "H2"]
    assert widget_props(viz.attention_heads(p, NASTY, layer=4).fragment())[0]["attentionHeadNames"][2] == "L4.H2"


@pytest.mark.parametrize("pattern, tokens, match", [
    (torch.rand(2, 3, 4, 5, 5), ["a"] * 5, r"\[head, q_pos, k_pos\]"),
    (torch.rand(3, 5, 6), ["a"] * 5, "square"),
    (torch.rand(3, 5, 5), ["a"] * 4, "4 tokens for a pattern over 5 positions"),
    (torch.full((3, 5, 5), float("nan")), ["a"] * 5, "NaN"),
    (torch.rand(3, 5, 5), "hello", "list of token strings"),
    (torch.rand(3, 5, 5), [["a"] * 5, ["b"] * 5], "one sequence"),
    ("not numbers", ["a"], "must be numbers"),
])
def test_attention_rejects_bad_input_clearly(pattern, tokens, match):
    with pytest.raises((ValueError, TypeError), match=match):
        viz.attention_heads(pattern, tokens)


def test_attention_bad_batch_index_and_head_names():
    with pytest.raises(IndexError, match="batch_index 2"):
        viz.attention_heads(causal_pattern(batch=2), NASTY, batch_index=2)
    with pytest.raises(ValueError, match="2 head names for 3 heads"):
        viz.attention_heads(causal_pattern(), NASTY, head_names=["a", "b"])


def test_colored_tokens_bad_input():
    with pytest.raises(ValueError, match="one value per token"):
        viz.colored_tokens(["a", "b"], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="hex"):
        viz.colored_tokens(["a"], [1.0], positive_color="blue")
    with pytest.raises(ValueError, match=r"\[pos, k\]"):
        viz.colored_tokens_multi(["a", "b"], torch.rand(3, 2))
    with pytest.raises(ValueError, match="1 labels for 2"):
        viz.colored_tokens_multi(["a", "b"], torch.rand(2, 2), labels=["x"])


def test_colored_tokens_colour_scale():
    fig = viz.colored_tokens(["a", "b", "c"], [-2.0, 0.0, 1.0])
    assert (fig.min_value, fig.max_value) == (-2.0, 2.0)           # symmetric: 0 is white
    assert fig.color(0.0) == (255, 255, 255) and fig.color(2.0) == (0x21, 0x66, 0xAC)
    assert fig.color(-2.0) == (0xB2, 0x18, 0x2B)
    seq = viz.colored_tokens(["a", "b"], [0.2, 0.6])                  # one sign: white -> colour
    assert seq.color(0.2) == (255, 255, 255) and seq.color(0.6) == (0x21, 0x66, 0xAC)
    assert 'title="1: &#x27;b&#x27; = 0.6"' in seq.fragment()


# -- sources: a model run, a cache, a store ---------------------------------------------------------
def test_layer_attention_from_model_and_cache_agree(tiny_model):
    tokens = tiny_model.to_tokens("def add(a, b):\n    return a + b")[0]
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tokens[None], names_filter="blocks.1.attn.hook_pattern")
    p_model, t_model = viz.layer_pattern(tiny_model, 1, tokens=tokens)
    p_cache, t_cache = viz.layer_pattern(cache, 1, tokens=tokens)
    torch.testing.assert_close(p_model, cache["pattern", 1][0])
    torch.testing.assert_close(p_cache, p_model)
    assert t_model == t_cache == tiny_model.to_str_tokens(tokens)
    p_dict, t_dict = viz.layer_pattern(dict(cache), 1, tokens=tokens)  # a plain dict has no model: ids
    assert t_dict == tokens.tolist()
    w = viz.layer_attention(tiny_model, 1, tokens="def add(a, b):\n    return a + b", view="patterns")
    assert w.component == "AttentionPatterns"
    props = widget_props(w.fragment())[0]
    assert np.allclose(props["attention"], p_model.numpy(), atol=1e-4)
    with pytest.raises(KeyError, match="names_filter='blocks.0.attn.hook_pattern'"):
        viz.layer_pattern(cache, 0, tokens=tokens)
    with pytest.raises(ValueError, match="view must be"):
        viz.layer_attention(cache, 1, tokens=tokens, view="grid")
    with pytest.raises(TypeError, match="source must be"):
        viz.layer_pattern(42, 0)


def test_layer_pattern_from_a_store_row_and_a_recorded_step(tiny_model, tmp_path):
    from workbench.store import ActivationStore, RecordingWriter, StoreWriter
    hook = "blocks.1.attn.hook_pattern"
    ids = tiny_model.to_tokens(["def add(a, b): return a", "class Point: x = y + 1"])[:, :6]
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(ids, names_filter=hook)
    spec = {hook: (tuple(cache[hook].shape[1:]), torch.float32)}
    with StoreWriter(tmp_path / "c.h5", spec, seq_len=6, attrs={"tokenizer": tiny_model.tokenizer.tok.to_str()}) as w:
        w.append(ids, {hook: cache[hook]})
    with RecordingWriter(tmp_path / "r.h5", spec, seq_len=6, probe_tokens=ids) as w:
        w.append_step(0, {hook: cache[hook] * 0 + 1 / 6})
        w.append_step(5, {hook: cache[hook]})
    with ActivationStore.open(tmp_path / "c.h5") as store:
        p, toks = viz.layer_pattern(store, 1, row=1)                       # tokenizer from the store's attrs
        torch.testing.assert_close(p, cache[hook][1])
        assert toks == tiny_model.to_str_tokens(ids[1])
        with pytest.raises(KeyError, match="no blocks.0.attn.hook_pattern"):
            viz.layer_pattern(store, 0)
        torch.testing.assert_close(viz.layer_pattern(store, 1, row=-1)[0], cache[hook][1])
        with pytest.raises(IndexError, match="row 2 is out of range: the store has 2 complete rows"):
            viz.layer_pattern(store, 1, row=2)
        with pytest.raises(ValueError, match="holds no steps"):
            viz.layer_pattern(store, 1, step=5)
    with ActivationStore.open(tmp_path / "r.h5") as rec:
        p, toks = viz.layer_pattern(rec, 1, row=0, step=5, tokenizer=tiny_model)
        torch.testing.assert_close(p, cache[hook][0])
        assert toks == tiny_model.to_str_tokens(ids[0])
        assert viz.layer_pattern(rec.at_step(0), 1)[1] == ids[0].tolist()     # no tokenizer anywhere: ids
        fig = viz.layer_attention(rec, 1, step=0)
        assert fig.component == "AttentionHeads" and fig.title == "layer 1 attention, at training step 0"
        assert "layer 1 attention, at training step 0</div>" in fig.fragment()
        assert viz.layer_attention(rec.at_step(5), 1, row=1).title == "layer 1 attention, row 1, at training step 5"
        with pytest.raises(ValueError, match=r"recorded steps: \[0, 5\]"):
            viz.layer_pattern(rec, 1)


# -- charts ---------------------------------------------------------------------------------------
def test_line_chart_draws_every_point():
    steps, score = [0, 1, 2, 4, 8, 16], [0.01, 0.02, 0.02, 0.1, 0.6, 0.8]
    fig = viz.line_chart({"best induction score": (steps, score), "loss": (steps, [4, 3.5, 3, 2, 1.5, 1.2])},
                         title="induction <forming>", log_x=True)
    svg = fig.fragment()
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 12
    assert "induction &lt;forming&gt;" in svg and "(log scale)" in svg
    pts = re.search(r'points="([^"]+)"', svg).group(1).split()
    xs = [float(p.split(",")[0]) for p in pts]
    assert xs == sorted(xs) and len(set(xs)) == 6
    ys = [float(p.split(",")[1]) for p in pts]
    assert ys[-1] < ys[0]                     # a larger score is drawn higher (smaller SVG y)
    assert viz.line_chart([3.0, 1.0]).series["y"][0].tolist() == [0.0, 1.0]


def test_line_chart_bad_input():
    with pytest.raises(ValueError, match="3 x values but 2 y values"):
        viz.line_chart({"a": ([0, 1, 2], [1.0, 2.0])})
    with pytest.raises(ValueError, match="log_x needs x >= 0"):
        viz.line_chart({"a": ([-1, 1], [1.0, 2.0])}, log_x=True)
    with pytest.raises(ValueError, match="empty"):
        viz.line_chart({"a": []})
    with pytest.raises(ValueError, match="at least one"):
        viz.line_chart({})
    with pytest.raises(ValueError, match="1-D"):
        viz.line_chart({"a": torch.rand(2, 3)})


def test_nice_ticks():
    assert viz.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert viz.nice_ticks(3, 97) == [20, 40, 60, 80]
    assert viz.nice_ticks(2, 2) == [2]


def test_metrics_chart_from_a_run_folder(tmp_path):
    rows = [{"step": s, "loss": 5 - s / 10} for s in range(10)]
    rows[4]["val_loss"], rows[9]["val_loss"] = 4.8, 4.2
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fig = viz.metrics_chart(tmp_path, keys=("loss", "val_loss"))
    assert fig.series["loss"][0].tolist() == list(range(10))
    assert fig.series["val_loss"][0].tolist() == [4, 9] and fig.series["val_loss"][1].tolist() == [4.8, 4.2]
    with pytest.raises(KeyError, match="keys there"):
        viz.metrics_chart(tmp_path, keys=("accuracy",))
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "loss": 1}\n{"step": 1, "lo')  # a killed run's last line
    assert viz.metrics_chart(tmp_path).series["loss"][1].tolist() == [1.0]
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "loss": 1}\n{"step": 1, "lo\n{"step": 2, "loss": 0.5}\n')
    with pytest.raises(DamagedFileError, match="metrics.jsonl:2 is not JSON"):
        viz.metrics_chart(tmp_path)
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        viz.metrics_chart(tmp_path / "nope")


def test_head_scores_chart_best_and_top_heads():
    steps = [0, 10, 20]
    scores = torch.zeros(3, 2, 4)
    scores[:, 1, 2] = torch.tensor([0.0, 0.5, 0.9])     # the head that forms
    scores[:, 0, 1] = torch.tensor([0.3, 0.2, 0.1])     # best early, fades
    fig = viz.head_scores_chart(steps, scores, top=2)
    assert list(fig.series) == ["best head", "L1.H2", "L0.H1"]
    assert np.allclose(fig.series["best head"][1], [0.3, 0.5, 0.9])
    assert fig.series["L1.H2"][0].tolist() == steps
    assert (fig.width, fig.height, fig.y_range) == (880, 440, (0.0, 1.0))   # scores are probabilities: 0..1
    svg = fig.svg()
    assert svg.count('stroke-dasharray="6 4"') == 2                         # "best head": its line and legend
    assert svg.index('stroke-dasharray="6 4" points=') > svg.index("<title>L0.H1</title>")   # drawn on top
    with pytest.raises(ValueError, match="n_steps = 2"):
        viz.head_scores_chart([0, 1], scores)


def test_logit_lens_tokens_scores_the_actual_next_token():
    lens = torch.randn(3, 5, 11)                        # [entries, pos, vocab]
    ids = torch.tensor([1, 4, 2, 9, 0])
    w = viz.logit_lens_tokens(lens, ids, str_toks=list("abcde"))
    props = widget_props(w.fragment())[0]
    assert props["tokens"] == list("bcde") and props["labels"] == ["L0", "L1", "final"]
    want = lens[1, 2].log_softmax(-1)[9].item()       # entry 1 at position 2 predicting token 3 (id 9)
    assert props["values"][2][1] == pytest.approx(want, abs=1e-4)
    batched = viz.logit_lens_tokens(lens[:, None].expand(3, 2, 5, 11), ids[None].expand(2, 5), batch_index=1)
    assert widget_props(batched.fragment())[0]["values"] == props["values"]
    with pytest.raises(ValueError, match="same pos"):
        viz.logit_lens_tokens(lens, ids[:4])


def test_logit_lens_tokens_on_a_real_cache(tiny_model):
    from workbench.analysis.lens import logit_lens
    tokens = tiny_model.to_tokens("def add(a, b):\n    return a + b")
    with torch.no_grad():
        logits, cache = tiny_model.run_with_cache(tokens)
        lens = logit_lens(cache)
    props = widget_props(viz.logit_lens_tokens(lens, tokens, tiny_model.to_str_tokens(tokens[0])).fragment())[0]
    final = logits[0, :-1].log_softmax(-1).gather(-1, tokens[0, 1:, None])[:, 0]
    assert np.allclose([row[-1] for row in props["values"]], final.numpy(), atol=1e-3)


def test_line_chart_in_a_notebook_is_a_data_uri_image_and_saves_as_svg(tmp_path):
    import base64
    import xml.etree.ElementTree as ET
    fig = viz.line_chart({"loss": [3.0, 2.0, 1.5]}, title="a & b")
    m = re.search(r'<img src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', fig._repr_html_())
    assert m and base64.b64decode(m.group(1)).decode() == fig.svg()
    root = ET.fromstring(fig.save(tmp_path / "loss.svg").read_text())   # well-formed standalone SVG
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "<svg" in fig.save(tmp_path / "loss.html").read_text()


def test_widget_says_what_to_do_where_scripts_do_not_run():
    frag = viz.attention_heads(causal_pattern(), NASTY).fragment()
    div = re.search(r'<div id="(wb-viz-[0-9a-f]+)"[^>]*>(.*?)</div>', frag)
    assert "jupyter trust" in div.group(2)                      # what an untrusted notebook shows
    assert f'var id = "{div.group(1)}"' in frag                 # the script renders into that div


def test_head_scores_chart_from_a_scores_table():
    import pandas as pd   # used by workbench.analysis.heads tables
    rows = [{"step": s, "layer": l, "head_index": h, "induction": (0.9 if (l, h) == (1, 0) else 0.1) * s / 10}
            for s in (0, 5, 10) for l in range(2) for h in range(2)]
    fig = viz.head_scores_chart(pd.DataFrame(rows), top=1)
    assert list(fig.series) == ["best head", "L1.H0"] and fig.series["L1.H0"][0].tolist() == [0, 5, 10]
    old = pd.DataFrame(rows).rename(columns={"head_index": "head"})      # a table from before the rename
    assert viz.head_scores_chart(old, top=1).series["L1.H0"][1].tolist() == fig.series["L1.H0"][1].tolist()
    only_layer_1 = pd.DataFrame([r for r in rows if r["layer"] == 1])
    assert list(viz.head_scores_chart(only_layer_1, top=1).series) == ["best head", "L1.H0"]  # named by layer
    assert np.allclose(fig.series["best head"][1], [0.0, 0.45, 0.9])
    assert fig.title == "induction score per step"
    with pytest.raises(KeyError, match="lacks columns"):
        viz.head_scores_chart(pd.DataFrame(rows), score="sink")
    with pytest.raises(ValueError, match="every \\(step, layer, head\\) once"):
        viz.head_scores_chart(pd.DataFrame(rows[:-1]))


# -- what a figure says: whitespace, the enlarged head, headings and captions ---------------------
WHITESPACE = ["<|bos|>", "def", " add", "\n", "    ", " a b", "\t", "x"]


def test_whitespace_tokens_get_visible_labels():
    p = causal_pattern(pos=len(WHITESPACE))
    heads = widget_props(viz.attention_heads(p, WHITESPACE).fragment())[0]["tokens"]
    assert heads == ["<\u200b|bos|>", "def", "\u00b7add", "\u21b5", "\u00b7" * 4, "\u00b7a\u00b7b", "\u21e5", "x"]
    text = widget_props(viz.attention_patterns(p, WHITESPACE).fragment())[0]["tokens"]
    assert text[2:6] == [" add", "\u21b5", "    ", " a b"]          # running text keeps its spaces
    assert viz.visible_token("a\r\n") == "a\u240d\u21b5"
    multi = widget_props(viz.colored_tokens_multi(WHITESPACE, torch.rand(8, 1)).fragment())[0]["tokens"]
    assert multi[3] == "\u21b5"


def test_attention_heads_enlarges_the_chosen_or_the_sharpest_head():
    n = 8
    p = torch.ones(3, n, n).tril()
    p = p / p.sum(-1, keepdim=True)                                  # heads 0 and 2: uniform
    p[1] = torch.eye(n).roll(-1, dims=1).tril()                      # head 1: previous token
    p[1, 0, 0] = 1.0
    assert viz.sharpest_head(p.numpy()) == 1
    frag = viz.attention_heads(p, list("abcdefgh"), layer=2).fragment()
    assert "focus(1, 0);" in frag
    assert "focus(2, 0);" in viz.attention_heads(p, list("abcdefgh"), focus=2).fragment()
    assert "focus(" not in viz.attention_heads(p, list("abcdefgh"), focus=0).fragment().split("function draw")[1]
    with pytest.raises(IndexError, match="focus=3 is not a head"):
        viz.attention_heads(p, list("abcdefgh"), focus=3)


def test_page_takes_headings_and_captions():
    chart = viz.line_chart({"loss": [3.0, 2.0]})
    page = viz.Page("# Induction <forming>", chart, "The best head's score per step & more.",
                    viz.Heading("Patterns", level=3), viz.Caption("row 0"),
                    viz.attention_heads(causal_pattern(), NASTY, title="layer 1 <at> step 5"))
    html = page.to_html()
    assert "<h1>Induction &lt;forming&gt;</h1>" in html and "<h3>Patterns</h3>" in html
    assert "The best head&#x27;s score per step &amp; more.</p>" in html and "row 0</p>" in html
    assert "layer 1 &lt;at&gt; step 5</div>" in html
    body = page.fragment()                                       # the bundle itself holds "<svg" strings
    assert body.index("<h1>") < body.index("<svg") < body.index("score per step") < body.index("<h3>")
    assert_offline(html)
    with pytest.raises(TypeError, match="figures and strings"):
        viz.Page(chart, 3)
    with pytest.raises(ValueError, match="level is 1 to 6"):
        viz.Heading("x", level=7)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium (Debian package chromium)")
def test_a_browser_opens_the_page_on_the_chosen_head(tmp_path):
    """The enlarged head is set by a click in the page's script: check it in a real browser."""
    p = causal_pattern(heads=4, pos=6)
    viz.attention_heads(p, NASTY, layer=1, focus=2, title="layer 1").save(tmp_path / "heads.html")
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", (tmp_path / "heads.html").as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=240).stdout
    assert "L1.H2<!-- --> Zoomed" in dom or "L1.H2 Zoomed" in dom, dom[-2000:]
