"""The circuit page in a real browser (Debian's chromium, driven by Playwright), with the network off.

The page must draw every node, show exactly the edges Python's pruned top-n selection keeps,
redraw when the sliders move, answer hover and click, request nothing, and log no errors.
"""
from __future__ import annotations

import re
import shutil

import pytest
import torch

from workbench.analysis.circuits import find_circuit
from workbench.analysis.tasks import induction_task
from workbench.viz import circuit_graph

from test_circuits_eap import random_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def graphs():
    model = random_model(n_layers=3, n_heads=3, d_model=48, vocab=40, dtype=torch.float32)
    task = induction_task(n_prompts=4, period=5, vocab_size=32, bos_token_id=39, seed=3)
    first = find_circuit(model, task, method="eap", check=5)
    with torch.no_grad():                       # a second "step": the same model, perturbed
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    second = find_circuit(model, task, method="eap", check=5)
    first.metadata["step"], second.metadata["step"] = 100, 200
    return first, second


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM, "the browser test needs Debian's chromium: apt-get install chromium"
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def open_page(browser, path):
    context = browser.new_context()
    requests, errors = [], []
    context.route("**/*", lambda route: (requests.append(route.request.url), route.abort())
                  if not route.request.url.startswith(("file:", "data:", "about:")) else route.continue_())
    context.set_offline(True)
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_selector(".wb-node")
    return page, requests, errors


def visible_edges(page) -> int:
    return page.locator("path.wb-edge:not(.wb-hidden)").count()


def set_slider(page, selector: str, value: int) -> None:
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


def test_page_draws_the_circuit_and_the_slider_redraws_it(graphs, browser, tmp_path):
    graph = graphs[0]
    path = circuit_graph(graph).save(tmp_path / "circuit.html")
    text = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", text) and "@import" not in text
    page, requests, errors = open_page(browser, path)
    assert page.locator(".wb-node").count() == len(graph.nodes) == 1 + 3 * 4 + 1
    assert page.locator("path.wb-edge").count() == graph.n_edges
    start = graph.metadata["requested_edges"]
    assert visible_edges(page) == int(graph.in_graph.sum()) == int(graph.select("top_n", start, prune=True).sum())
    for n in (3, 25, graph.n_edges):
        set_slider(page, ".wb-edge-slider", n)
        assert visible_edges(page) == int(graph.select("top_n", n, prune=True).sum())
        shown = re.search(r"faithfulness (-?[0-9.]+)", page.locator(".wb-info").inner_text())
        assert float(shown.group(1)) == pytest.approx(graph.curve.at(n), abs=1e-3)
    assert visible_edges(page) != int(graph.select("top_n", 3, prune=True).sum())
    assert requests == [] and errors == []


def test_hover_shows_scores_and_click_highlights_paths(graphs, browser, tmp_path):
    graph = graphs[0]
    page, requests, errors = open_page(browser, circuit_graph(graph).save(tmp_path / "c.html"))
    set_slider(page, ".wb-edge-slider", graph.n_edges)
    name = graph.circuit_edges()[0]
    w, r = graph.layout.parse_edge(name)
    k = [e.name for e in graph.edges()].index(name)
    page.locator(f'path.wb-edge[data-edge="{k}"]').dispatch_event("mousemove", {"clientX": 50, "clientY": 50})
    tip = page.locator(".wb-tip").inner_text()
    assert name in tip and f"{float(graph.scores[w, r]):.4f}"[:6] in tip and "exact patching" in tip
    assert page.locator("path.wb-edge.wb-dim").count() == 0
    page.locator('.wb-node[data-node="a1.h0"]').click()
    dimmed = page.locator("path.wb-edge:not(.wb-hidden).wb-dim").count()
    assert 0 < dimmed < visible_edges(page)
    page.locator('.wb-node[data-node="a1.h0"]').click()                 # click again: everything lit
    assert page.locator("path.wb-edge.wb-dim").count() == 0
    assert requests == [] and errors == []


def test_step_slider_switches_graphs(graphs, browser, tmp_path):
    steps = [100, 200]
    scores = torch.rand(2, 3, 3)
    page, requests, errors = open_page(browser, circuit_graph(list(graphs), head_scores=(steps, scores))
                                       .save(tmp_path / "steps.html"))
    label = page.locator(".wb-control").first
    assert "step 200" in label.inner_text()                               # starts at the last step
    set_slider(page, ".wb-edge-slider", 30)
    last = page.locator("path.wb-edge:not(.wb-hidden)").evaluate_all("els => els.map(e => e.getAttribute('stroke-width'))")
    set_slider(page, ".wb-step-slider", 0)
    assert "step 100" in label.inner_text()
    first = page.locator("path.wb-edge:not(.wb-hidden)").evaluate_all("els => els.map(e => e.getAttribute('stroke-width'))")
    assert first != last
    assert page.locator(".wb-chart").count() == 2                         # faithfulness and head-score curves
    assert requests == [] and errors == []


def test_bad_input_is_one_clear_error():
    with pytest.raises(TypeError, match="Graph"):
        circuit_graph({"nodes": []})
    with pytest.raises(ValueError, match="at least one"):
        circuit_graph([])
