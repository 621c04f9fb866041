"""Self-contained HTML for visualizations: the circuitsvis bundle inlined, nothing fetched.

circuitsvis's own HTML loads its script from unpkg.com (``str(obj)``,
``show_code()``) and its ``_repr_html_`` first probes google.com (a one-second
stall offline) before falling back to the bundle shipped in the wheel. Here
every figure carries what it needs:

- ``Figure.fragment()``: the figure's own markup (a ``<div>`` plus a small
  ``<script>`` calling ``CircuitsVis.render``, or plain HTML/SVG);
- the bundle ``circuitsvis/dist/cdn/iife.js`` (about 1.3 MB) as one classic
  ``<script>``, which defines the global ``window.CircuitsVis``.

A page needs the bundle once however many widgets it shows: ``Page`` and
``Figure.save`` write it once; ``_repr_html_`` includes it in every notebook
output by default (each output then works on its own), or only in the first
output of the session after ``configure(inline_bundle="once")``.
"""
from __future__ import annotations

import html
import json
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import circuitsvis
import numpy as np
import torch

_MODES = ("always", "once")
_state = {"inline_bundle": "always", "bundle_shown": False}


def configure(inline_bundle: str = "always") -> None:
    """How notebook outputs (``_repr_html_``) carry the circuitsvis bundle.

    ``"always"`` (default): every output includes the ~1.3 MB bundle and renders
    on its own, also after the notebook is reopened or cells are cleared.
    ``"once"``: only the first widget shown in this kernel session includes it;
    later outputs use ``window.CircuitsVis`` from that one (smaller notebooks,
    but clearing that first output blanks the later ones on reload).
    """
    if inline_bundle not in _MODES:
        raise ValueError(f"inline_bundle must be one of {_MODES}, got {inline_bundle!r}")
    _state["inline_bundle"] = inline_bundle
    _state["bundle_shown"] = False


@lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The circuitsvis browser bundle (``dist/cdn/iife.js`` from the installed wheel), safe to inline.

    ``</script`` inside the code would end the inline ``<script>`` element early,
    so it becomes ``<\\/script`` (the same string to JavaScript); the source-map
    comment is dropped so nothing asks for ``iife.js.map``.
    """
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise FileNotFoundError(f"the circuitsvis wheel has no browser bundle at {path}; "
                                "reinstall it: pip install --force-reinstall 'circuitsvis>=1.43.3'")
    js = path.read_text(encoding="utf-8")
    js = "\n".join(line for line in js.splitlines() if not line.startswith("//# sourceMappingURL="))
    return js.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")


def bundle_script() -> str:
    """``<script>`` defining ``window.CircuitsVis`` (skipped if the page already has it)."""
    # The bundle runs as a function body so its leading "use strict" stays a directive.
    return ("<script>\nif (typeof window.CircuitsVis === 'undefined') {\n"
            "window.CircuitsVis = (function () {\n" + circuitsvis_bundle()
            + "\nreturn CircuitsVis;\n})();\n}\n</script>\n")


ZWSP = "\u200b"  # zero-width space


def escape_token(token: str) -> str:
    """A token string made inert for circuitsvis, which writes tokens into the page with ``innerHTML``.

    A zero-width space goes after every ``<`` and ``&``. HTML only starts a tag
    at ``<`` followed by a letter, ``/``, ``!`` or ``?``, and only decodes an
    entity at ``&`` followed by a name, so ``<script>``, ``</div>`` or
    ``<img onerror=...>`` arrive as text. Unlike ``&lt;`` entities, this also
    reads right where circuitsvis draws the same strings as plain text (the
    heatmap axis labels, drawn on a canvas).
    """
    return str(token).replace("&", "&" + ZWSP).replace("<", "<" + ZWSP)


# circuitsvis draws heatmap axis labels with every whitespace character removed, and running text
# (token buttons) with newlines collapsed: these stand in for whitespace so that every token shows.
WHITESPACE_SIGNS = {"\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}   # ↵ ⇥ ␍
SPACE_SIGN = "\u00b7"                                                   # ·


def visible_token(token: str, spaces: bool = False) -> str:
    """``token`` with newline, tab and carriage return shown as ``↵ ⇥ ␍``; with ``spaces`` also each space as ``·``.

    Heatmap labels need ``spaces=True`` (circuitsvis strips every space from them, so ``" a b"`` would
    read ``ab`` and a whitespace-only token would be blank); running text keeps its spaces.
    """
    for ch, sign in WHITESPACE_SIGNS.items():
        token = token.replace(ch, sign)
    return token.replace(" ", SPACE_SIGN) if spaces else token


def script_json(value: Any) -> str:
    """JSON that is safe inside an inline ``<script>``: ``<``, ``>`` and JS line separators escaped."""
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))  # "<" escaped: no </script> or <!--
    return (text.replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def to_numpy(values: Any, name: str) -> np.ndarray:
    """A float64 array from a tensor, array or nested list; non-finite values are an error."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", dtype=torch.float64).numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be numbers (a tensor, array or list), got {type(values).__name__}: {e}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values; pass finite numbers "
                         "(for attention, the pattern after softmax, not the masked scores)")
    return arr


def rounded(arr: np.ndarray, decimals: int = 4) -> list:
    """Nested lists with ``decimals`` places: keeps the JSON payload ~6 bytes a number."""
    return np.round(arr, decimals).tolist()


def str_tokens(tokens: Union[Sequence[Any], Any], name: str = "tokens") -> list[str]:
    """Token strings from a list of str, or a list / 1-D tensor of ids (shown as numbers)."""
    if hasattr(tokens, "tolist") and not isinstance(tokens, (list, tuple)):
        tokens = tokens.tolist()
    if isinstance(tokens, str) or not isinstance(tokens, (list, tuple)):
        raise TypeError(f"{name} must be a list of token strings (e.g. model.to_str_tokens(text)) "
                        f"or of token ids, got {type(tokens).__name__}")
    if tokens and isinstance(tokens[0], (list, tuple)):
        raise ValueError(f"{name} must be one sequence, got a batch of {len(tokens)}; pick one row")
    return [str(t) for t in tokens]


class Figure:
    """An HTML figure: shows itself in Jupyter (``_repr_html_``) and writes a standalone page (``save``)."""

    needs_bundle: bool = False

    def fragment(self) -> str:
        """The figure's markup without the circuitsvis bundle."""
        raise NotImplementedError

    def _repr_html_(self) -> str:
        if not self.needs_bundle:
            return self.fragment()
        if _state["inline_bundle"] == "once" and _state["bundle_shown"]:
            return self.fragment()
        _state["bundle_shown"] = True
        return bundle_script() + self.fragment()

    def __html__(self) -> str:
        return self._repr_html_()

    def to_html(self, title: str = "workbench figure") -> str:
        """A complete HTML document that renders offline (the bundle inlined once, if needed)."""
        return page_html([self], title)

    def save(self, path: Union[str, Path], title: Optional[str] = None) -> Path:
        """Write ``to_html()`` to ``path`` (UTF-8); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_html(title or path.stem), encoding="utf-8")
        return path

    # No __str__ override: print(fig) shows the repr, not 1.3 MB of page (use to_html() or save()).


class SvgFigure(Figure):
    """A figure drawn as one SVG document (``svg()``); ``save("x.svg")`` writes the bare SVG."""

    def svg(self) -> str:
        raise NotImplementedError

    @staticmethod
    def svg_head(width: int, height: int, css_class: str, title: str = "", font_size: int = 12,
                 title_size: int = 14) -> list[str]:
        """The opening ``<svg>`` tag (``width`` x ``height`` px), a white background and the centred title."""
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
               f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="{font_size}" class="{css_class}">',
               f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>']
        if title:
            out.append(f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="{title_size}" '
                       f'font-weight="bold">{html.escape(title)}</text>')
        return out

    def save(self, path: Union[str, Path], title: Optional[str] = None) -> Path:
        """A standalone HTML page, or the bare SVG when ``path`` ends in ``.svg``."""
        path = Path(path)
        if path.suffix.lower() != ".svg":
            return super().save(path, title)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.svg(), encoding="utf-8")
        return path


PLACEHOLDER = ("[interactive circuitsvis figure: it shows when its script runs; in Jupyter, run the cell "
               "or trust the notebook (jupyter trust NOTEBOOK.ipynb)]")


class CircuitsVisWidget(Figure):
    """One circuitsvis React component with its props, rendered from the inlined bundle.

    ``title``: a heading drawn above the component. ``focus_head``: for ``AttentionHeads``, the head
    enlarged when the figure opens (circuitsvis always starts at head 0 and takes no prop for it,
    so the script clicks that head's thumbnail once the component has drawn; a click is what locks
    a head in circuitsvis, so the user can still hover or click any other).
    """

    needs_bundle = True

    def __init__(self, component: str, props: dict, height: Optional[int] = None, title: Optional[str] = None,
                 focus_head: Optional[int] = None) -> None:
        self.component = component
        self.props = {k: v for k, v in props.items() if v is not None}
        self.id = "wb-viz-" + uuid.uuid4().hex[:12]
        self.height = height
        self.title = title
        self.focus_head = focus_head

    def fragment(self) -> str:
        style = "margin: 15px 0;" + (f" min-height: {self.height}px;" if self.height else "")
        heading = f'<div class="workbench-title" style="{TITLE_STYLE}">{html.escape(self.title)}</div>\n' \
            if self.title else ""
        # Poll briefly for window.CircuitsVis: with inline_bundle="once" it comes from another output.
        # The placeholder text stays only where scripts do not run (an untrusted notebook); React replaces it.
        focus = "" if not self.focus_head else (  # head 0 is circuitsvis's own start
            f"      focus({int(self.focus_head)}, 0);\n")
        return (f'{heading}<div id="{self.id}" class="workbench-viz" style="{style}">'
                f'<span style="color: #888;">{PLACEHOLDER}</span></div>\n'
                "<script>\n(function () {\n"
                f'  var id = "{self.id}", props = {script_json(self.props)}, tries = 0;\n'
                "  function focus(head, n) {  // the thumbnails' labels are the first <h4>s, in head order\n"
                "    var labels = document.getElementById(id).getElementsByTagName('h4');\n"
                "    if (labels.length > head) { labels[head].click(); }\n"
                "    else if (n < 100) { setTimeout(function () { focus(head, n + 1); }, 50); }\n"
                "  }\n"
                "  function draw() {\n"
                "    if (typeof window.CircuitsVis !== 'undefined') {\n"
                f"      window.CircuitsVis.render(id, window.CircuitsVis.{self.component}, props);\n"
                f"{focus}"
                "    } else if (tries++ < 100) { setTimeout(draw, 50); }\n"
                "    else { document.getElementById(id).textContent = 'circuitsvis bundle not loaded on "
                "this page: re-run with workbench.viz.configure(inline_bundle=\"always\")'; }\n"
                "  }\n  draw();\n})();\n</script>\n")

    def __repr__(self) -> str:
        return f"CircuitsVisWidget({self.component}, props={sorted(self.props)})"


TITLE_STYLE = "font-weight: bold; font-size: 15px; margin: 12px 0 4px 0;"


class Heading(Figure):
    """A heading on a ``Page`` (``<h2>`` by default; ``level`` 1-6)."""

    def __init__(self, text: str, level: int = 2) -> None:
        if not 1 <= int(level) <= 6:
            raise ValueError(f"a heading level is 1 to 6, got {level}")
        self.text, self.level = str(text), int(level)

    def fragment(self) -> str:
        return f"<h{self.level}>{html.escape(self.text)}</h{self.level}>\n"

    def __repr__(self) -> str:
        return f"Heading({self.text!r})"


class Caption(Figure):
    """A paragraph of text on a ``Page``: what the figure above or below shows, how to read it."""

    def __init__(self, text: str) -> None:
        self.text = str(text)

    def fragment(self) -> str:
        return f'<p style="max-width: 60em; color: #333;">{html.escape(self.text)}</p>\n'

    def __repr__(self) -> str:
        return f"Caption({self.text!r})"


def _page_item(item: Any) -> Figure:
    """A figure as is; a string as a ``Heading`` when it starts with ``#`` (``## x`` is level 2), else a ``Caption``."""
    if isinstance(item, Figure):
        return item
    if isinstance(item, str):
        stripped = item.lstrip()
        level = len(stripped) - len(stripped.lstrip("#"))
        if 1 <= level <= 6:
            return Heading(stripped[level:].strip(), level)
        return Caption(item)
    raise TypeError(f"Page takes workbench.viz figures and strings (headings, captions), got {type(item).__name__}")


class Page(Figure):
    """Several figures on one page, with the circuitsvis bundle inlined once.

    ``Page("# Induction", chart, "The best head's score per step.", widget)``: a string starting with
    ``#`` is a heading (``##`` a smaller one), any other string a caption paragraph; ``Heading`` and
    ``Caption`` say the same explicitly.
    """

    def __init__(self, *items: Union[Figure, str], title: str = "workbench figures") -> None:
        self.figures = [_page_item(f) for f in items]
        self.title = title

    @property
    def needs_bundle(self) -> bool:  # type: ignore[override]
        return any(f.needs_bundle for f in self.figures)

    def fragment(self) -> str:
        return "\n".join(f.fragment() for f in self.figures)

    def to_html(self, title: Optional[str] = None) -> str:
        return page_html(self.figures, title or self.title)


def page_html(figures: Iterable[Figure], title: str) -> str:
    """A complete document holding ``figures``; the bundle appears at most once."""
    figures = list(figures)
    head = bundle_script() if any(f.needs_bundle for f in figures) else ""
    body = "\n".join(f.fragment() for f in figures)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n</head>\n<body style=\"font-family: sans-serif;\">\n"
            f"{head}{body}\n</body>\n</html>\n")
