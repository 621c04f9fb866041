/* The interactive circuit graph of workbench.viz.circuit_graph: plain SVG and DOM, no library.
 *
 * window.WorkbenchCircuitGraph.render(root, data) draws into the element `root` from `data`:
 *   nodes  [{name, layer, kind}]           graph order: input, a0.h0.., m0, a1.h0.., m1, .., logits
 *   edges  [[writer, reader_node, input]]  input "q" | "k" | "v" | "" (into an MLP or the logits)
 *   graphs [{label, step, scores[], exact[] (null: not computed), chosen[] (edge ids), chosen_n,
 *            curve {requested[], sizes[], values[], area} | null, faithfulness, meta {...}}]
 *   head_curve {steps[], series {name: values[]}, label} | null;  initial: index into graphs
 * Edges are ranked by |score|; the slider keeps the top n, then drops edges that lie on no path
 * from input to logits (the same pruning as Graph.select(..., prune=True) in Python).
 */
(function () {
  "use strict";
  if (window.WorkbenchCircuitGraph) { return; }
  var SVGNS = "http://www.w3.org/2000/svg";
  var HELPS = "#2166ac", HURTS = "#d6604d";
  var DASH = { q: "", k: "7 4", v: "2 3", "": "" };
  var PORT = { q: -0.3, k: 0, v: 0.3, "": 0 };

  function svg(tag, attrs, parent) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) { if (attrs[k] !== null && attrs[k] !== undefined) { e.setAttribute(k, attrs[k]); } }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function html(tag, attrs, parent, text) {
    var e = document.createElement(tag);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (text !== undefined) { e.textContent = text; }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) { return "n/a"; }
    var a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toFixed(a < 1 ? 4 : 3);
  }

  /* Node boxes: input at the bottom, logits at the top, a row per layer (heads, then the MLP). */
  function layout(data) {
    var H = data.n_heads, L = data.n_layers, colW = 62, rowH = 92, left = 70, top = 34;
    var width = Math.max(560, left + (H + 1.4) * colW + 30);
    var height = top + (L + 1) * rowH + 46;
    var pos = data.nodes.map(function (n, i) {
      var row = n.kind === "logits" ? 0 : n.kind === "input" ? L + 1 : L - n.layer;
      var y = top + row * rowH;
      if (n.kind === "input" || n.kind === "logits") { return { x: left + (H + 1.4) * colW / 2, y: y, w: 84 }; }
      var col = n.kind === "mlp" ? H + 0.4 : (i - 1) % (H + 1);
      return { x: left + (col + 0.5) * colW, y: y, w: n.kind === "mlp" ? 56 : 48 };
    });
    return { pos: pos, width: width, height: height, rowH: rowH, top: top, nodeH: 26 };
  }

  function edgePath(lay, e) {
    var a = lay.pos[e[0]], b = lay.pos[e[1]], h = lay.nodeH / 2;
    var x1 = a.x, y1 = a.y - h, x2 = b.x + PORT[e[2]] * b.w, y2 = b.y + h;
    var dy = Math.max(24, (y1 - y2) * 0.45);
    return "M" + x1.toFixed(1) + "," + y1.toFixed(1) + " C" + x1.toFixed(1) + "," + (y1 - dy).toFixed(1) + " " +
      x2.toFixed(1) + "," + (y2 + dy).toFixed(1) + " " + x2.toFixed(1) + "," + y2.toFixed(1);
  }

  /* Edge ids of the top-n by |score| that lie on a path input -> logits within the top-n. */
  function pruned(data, order, n) {
    var N = data.nodes.length, on = new Uint8Array(data.edges.length), fwd = new Uint8Array(N),
      bwd = new Uint8Array(N), i, e;
    for (i = 0; i < n && i < order.length; i++) { on[order[i]] = 1; }
    fwd[0] = 1; bwd[N - 1] = 1;
    var byReader = data._byReader, byWriter = data._byWriter;
    for (var v = 1; v < N; v++) {
      for (i = 0; i < byReader[v].length; i++) { e = byReader[v][i]; if (on[e] && fwd[data.edges[e][0]]) { fwd[v] = 1; break; } }
    }
    for (var u = N - 2; u >= 0; u--) {
      for (i = 0; i < byWriter[u].length; i++) { e = byWriter[u][i]; if (on[e] && bwd[data.edges[e][1]]) { bwd[u] = 1; break; } }
    }
    var kept = [];
    for (e = 0; e < data.edges.length; e++) {
      if (on[e] && fwd[data.edges[e][0]] && bwd[data.edges[e][1]]) { kept.push(e); }
    }
    return kept;
  }

  /* A small line chart; returns {mark(x)} to move a vertical marker. */
  function chart(parent, spec) {
    var w = 300, h = 170, l = 44, r = 10, t = 22, b = 34;
    var s = svg("svg", { width: w, height: h, "class": "wb-chart", "font-size": 10 }, parent);
    svg("text", { x: w / 2, y: 13, "text-anchor": "middle", "font-weight": "bold", "font-size": 11 }, s).textContent = spec.title;
    var tx = spec.logx ? function (x) { return Math.log10(1 + Math.max(0, x)); } : function (x) { return x; };
    var xs = [], ys = [];
    spec.series.forEach(function (se) { se.xs.forEach(function (x, i) { if (se.ys[i] !== null) { xs.push(tx(x)); ys.push(se.ys[i]); } }); });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys.concat([spec.ymin !== undefined ? spec.ymin : Infinity])),
      y1 = Math.max.apply(null, ys.concat([spec.ymax !== undefined ? spec.ymax : -Infinity]));
    if (x1 === x0) { x1 = x0 + 1; } if (y1 === y0) { y1 = y0 + 1; }
    var px = function (x) { return l + (tx(x) - x0) / (x1 - x0) * (w - l - r); };
    var py = function (y) { return t + (1 - (y - y0) / (y1 - y0)) * (h - t - b); };
    svg("rect", { x: l, y: t, width: w - l - r, height: h - t - b, fill: "none", stroke: "#999" }, s);
    [y0, (y0 + y1) / 2, y1].forEach(function (v) {
      svg("text", { x: l - 4, y: py(v) + 3, "text-anchor": "end" }, s).textContent = String(Number(v.toPrecision(2)));
    });
    var xt = spec.logx ? [x0, x1].map(function (v) { return Math.round(Math.pow(10, v) - 1); }) : [spec.xmin !== undefined ? spec.xmin : x0, x1];
    xt.forEach(function (v, i) {
      svg("text", { x: i ? w - r : l, y: h - b + 12, "text-anchor": i ? "end" : "start" }, s).textContent = String(Math.round(v));
    });
    svg("text", { x: l + (w - l - r) / 2, y: h - 6, "text-anchor": "middle" }, s).textContent = spec.xlabel;
    spec.series.forEach(function (se, k) {
      var pts = [];
      se.xs.forEach(function (x, i) { if (se.ys[i] !== null) { pts.push(px(x).toFixed(1) + "," + py(se.ys[i]).toFixed(1)); } });
      var line = svg("polyline", { points: pts.join(" "), fill: "none", stroke: se.color, "stroke-width": k ? 1.2 : 2 }, s);
      svg("title", {}, line).textContent = se.name;
    });
    if (spec.series.length > 1) {
      spec.series.forEach(function (se, k) {
        svg("text", { x: l + 4, y: t + 11 + 11 * k, fill: se.color }, s).textContent = se.name;
      });
    }
    var marker = svg("line", { y1: t, y2: h - b, stroke: "#222", "stroke-dasharray": "3 2" }, s);
    var dot = svg("circle", { r: 3.5, fill: "#222" }, s);
    return {
      mark: function (x, y) {
        marker.setAttribute("x1", px(x)); marker.setAttribute("x2", px(x));
        var show = y !== null && y !== undefined;
        dot.setAttribute("visibility", show ? "visible" : "hidden");
        if (show) { dot.setAttribute("cx", px(x)); dot.setAttribute("cy", py(y)); }
      }
    };
  }

  function render(root, data) {
    var N = data.nodes.length, E = data.edges.length, lay = layout(data);
    data._byReader = []; data._byWriter = [];
    for (var i = 0; i < N; i++) { data._byReader.push([]); data._byWriter.push([]); }
    data.edges.forEach(function (e, k) { data._byReader[e[1]].push(k); data._byWriter[e[0]].push(k); });
    data.graphs.forEach(function (g) {
      g._order = g.scores.map(function (_, k) { return k; }).sort(function (a, b) {
        return Math.abs(g.scores[b]) - Math.abs(g.scores[a]) || a - b;
      });
      g._rank = new Array(E);
      g._order.forEach(function (e, r) { g._rank[e] = r + 1; });
      g._max = Math.max.apply(null, g.scores.map(Math.abs).concat([1e-30]));
    });
    var state = { g: data.initial, n: null, selected: null };
    var first = data.graphs[state.g];
    state.n = first.chosen_n !== null && first.chosen_n !== undefined ? first.chosen_n : first.chosen.length;

    root.innerHTML = "";
    root.classList.add("wb-circuit");
    if (data.title) { html("div", { "class": "wb-title" }, root, data.title); }
    var controls = html("div", { "class": "wb-controls" }, root);
    var stepBox = null, stepInput = null;
    if (data.graphs.length > 1) {
      stepBox = html("label", { "class": "wb-control" }, controls, "training step ");
      stepInput = html("input", { type: "range", min: 0, max: data.graphs.length - 1, step: 1, value: state.g, "class": "wb-step-slider" }, stepBox);
      stepBox._out = html("b", {}, stepBox);
    }
    var nBox = html("label", { "class": "wb-control" }, controls, "edges ");
    var nInput = html("input", { type: "range", min: 0, max: E, step: 1, value: state.n, "class": "wb-edge-slider" }, nBox);
    nBox._out = html("b", {}, nBox);
    var info = html("div", { "class": "wb-info" }, root);
    var body = html("div", { "class": "wb-body" }, root);
    var holder = html("div", { "class": "wb-svg-holder" }, body);
    var side = html("div", { "class": "wb-side" }, body);
    var s = svg("svg", { width: lay.width, height: lay.height, "class": "wb-graph", "font-size": 11 }, holder);
    svg("rect", { x: 0, y: 0, width: lay.width, height: lay.height, fill: "white", "class": "wb-background" }, s);
    for (var L = 0; L < data.n_layers; L++) {
      svg("text", { x: 8, y: lay.top + (data.n_layers - L) * lay.rowH + 4, fill: "#777" }, s).textContent = "layer " + L;
    }
    var gEdges = svg("g", {}, s), gNodes = svg("g", {}, s);
    var edgeEls = data.edges.map(function (e, k) {
      var p = svg("path", { d: edgePath(lay, e), fill: "none", "class": "wb-edge wb-hidden", "stroke-dasharray": DASH[e[2]] || null,
        "data-edge": k }, gEdges);
      return p;
    });
    var nodeEls = data.nodes.map(function (n, k) {
      var p = lay.pos[k], g = svg("g", { "class": "wb-node wb-node-" + n.kind, "data-node": n.name, transform: "translate(" + p.x + "," + p.y + ")" }, gNodes);
      svg("rect", { x: -p.w / 2, y: -lay.nodeH / 2, width: p.w, height: lay.nodeH, rx: n.kind === "head" ? 9 : 3 }, g);
      var label = n.kind === "head" ? n.name.split(".")[1] : n.kind === "mlp" ? "MLP " + n.layer : n.name;
      svg("text", { y: 4, "text-anchor": "middle" }, g).textContent = label;
      if (n.kind === "head") {
        ["q", "k", "v"].forEach(function (q) {
          svg("text", { x: PORT[q] * p.w, y: lay.nodeH / 2 + 9, "text-anchor": "middle", "class": "wb-port" }, g).textContent = q;
        });
      }
      return g;
    });
    var legend = html("div", { "class": "wb-legend" }, root);
    legend.innerHTML = '<span style="color:' + HELPS + '">&#9644; helps the clean behaviour (score &lt; 0: corrupting the edge lowers the metric)</span>' +
      '<span style="color:' + HURTS + '">&#9644; works against it (score &gt; 0)</span>' +
      '<span><svg width="34" height="8"><line x1="0" y1="4" x2="34" y2="4" stroke="#444" stroke-width="2"/></svg> into q</span>' +
      '<span><svg width="34" height="8"><line x1="0" y1="4" x2="34" y2="4" stroke="#444" stroke-width="2" stroke-dasharray="7 4"/></svg> into k</span>' +
      '<span><svg width="34" height="8"><line x1="0" y1="4" x2="34" y2="4" stroke="#444" stroke-width="2" stroke-dasharray="2 3"/></svg> into v</span>' +
      "<span>width: |score|; hover for values; click a node for the paths through it</span>";
    var tip = html("div", { "class": "wb-tip" }, root);

    var curveChart = null, headChart = null;
    var cur = function () { return data.graphs[state.g]; };
    if (data.graphs.some(function (g) { return g.curve; })) {
      var c0 = data.graphs.filter(function (g) { return g.curve; })[0].curve;
      curveChart = { box: html("div", {}, side), xs: c0.requested };
    }
    if (data.head_curve) {
      var hc = data.head_curve, colors = ["#222", "#1b9e77", "#d95f02", "#7570b3", "#e7298a"];
      headChart = chart(html("div", {}, side), { title: hc.label, xlabel: "training step (log scale)", logx: true,
        series: Object.keys(hc.series).map(function (k, j) { return { name: k, xs: hc.steps, ys: hc.series[k], color: colors[j % 5] }; }) });
    }

    function drawCurve() {
      if (!curveChart) { return; }
      var g = cur();
      curveChart.box.innerHTML = "";
      if (!g.curve) { return; }
      curveChart.chart = chart(curveChart.box, { title: "faithfulness vs edges kept", xlabel: "edges (top n by |score|)",
        ymin: 0, ymax: 1, xmin: 0, series: [{ name: "faithfulness", xs: g.curve.requested, ys: g.curve.values, color: HELPS }] });
    }

    function faithAt(g, n) {
      if (!g.curve) { return null; }
      var k = g.curve.requested.indexOf(n);
      return k < 0 ? null : { f: g.curve.values[k], n: n };
    }
    function nearest(g, n) {
      var best = null;
      g.curve.requested.forEach(function (m, k) { if (best === null || Math.abs(m - n) < Math.abs(best.n - n)) { best = { n: m, f: g.curve.values[k] }; } });
      return best;
    }

    function describe(kept) {
      var g = cur(), m = g.meta || {}, parts = [];
      var method = (m.method || "score").toUpperCase();
      parts.push("<b>" + kept.length + "</b> of " + E + " edges shown (top " + state.n + " by |" + method + " score|, then pruned to paths input &rarr; logits)");
      var f = faithAt(g, state.n);
      if (f) { parts.push("faithfulness <b>" + fmt(f.f) + "</b>"); }
      else if (g.curve) { var nb = nearest(g, state.n); parts.push("faithfulness not computed at " + state.n + " (at " + nb.n + ": " + fmt(nb.f) + ")"); }
      if (g.curve && g.curve.area !== null) { parts.push("area under the curve " + fmt(g.curve.area)); }
      if (m.task) { parts.push("task: " + m.task.name + " (" + m.task.n_prompts + " prompts)"); }
      if (m.clean_metric !== undefined) { parts.push("metric clean " + fmt(m.clean_metric) + ", corrupted " + fmt(m.corrupted_metric)); }
      info.innerHTML = parts.join(" &middot; ");
      return f;
    }

    function highlight(kept) {
      var on = {}, nodesOn = {};
      kept.forEach(function (e) { on[e] = 1; nodesOn[data.edges[e][0]] = 1; nodesOn[data.edges[e][1]] = 1; });
      var sel = state.selected, anc = {}, desc = {};
      if (sel !== null) {
        var stack = [sel];
        while (stack.length) { var v = stack.pop(); data._byReader[v].forEach(function (e) { var u = data.edges[e][0]; if (on[e] && !anc[u]) { anc[u] = 1; stack.push(u); } }); }
        stack = [sel];
        while (stack.length) { var u2 = stack.pop(); data._byWriter[u2].forEach(function (e) { var w = data.edges[e][1]; if (on[e] && !desc[w]) { desc[w] = 1; stack.push(w); } }); }
      }
      edgeEls.forEach(function (p, e) {
        var lit = sel === null || !on[e] ? true :
          (anc[data.edges[e][0]] && (data.edges[e][1] === sel || anc[data.edges[e][1]])) ||
          ((data.edges[e][0] === sel || desc[data.edges[e][0]]) && desc[data.edges[e][1]]);
        p.classList.toggle("wb-dim", !lit);
      });
      nodeEls.forEach(function (g, k) {
        g.classList.toggle("wb-off", !nodesOn[k]);
        g.classList.toggle("wb-selected", k === sel);
      });
    }

    function draw() {
      var g = cur(), kept = pruned(data, g._order, state.n), show = {};
      kept.forEach(function (e) { show[e] = 1; });
      edgeEls.forEach(function (p, e) {
        var sc = g.scores[e];
        p.classList.toggle("wb-hidden", !show[e]);
        p.setAttribute("stroke", sc < 0 ? HELPS : HURTS);
        p.setAttribute("stroke-width", (0.8 + 6 * Math.abs(sc) / g._max).toFixed(2));
      });
      kept.slice().sort(function (a, b) { return g._rank[b] - g._rank[a]; })
        .forEach(function (e) { gEdges.appendChild(edgeEls[e]); });  // strongest drawn last, on top
      nBox._out.textContent = " " + state.n;
      if (stepBox) { stepBox._out.textContent = " " + (g.label || g.step); }
      var f = describe(kept);
      if (curveChart && curveChart.chart) { curveChart.chart.mark(state.n, f ? f.f : null); }
      if (headChart && g.step !== null && g.step !== undefined) { headChart.mark(g.step, null); }
      highlight(kept);
      root.setAttribute("data-visible-edges", kept.length);
    }

    function showTip(evt, text) {
      tip.textContent = text;
      tip.style.display = "block";
      var box = root.getBoundingClientRect();
      tip.style.left = (evt.clientX - box.left + 14) + "px";
      tip.style.top = (evt.clientY - box.top + 14) + "px";
    }
    gEdges.addEventListener("mousemove", function (evt) {
      var k = evt.target.getAttribute("data-edge");
      if (k === null) { return; }
      var g = cur(), e = data.edges[+k], m = g.meta || {};
      var name = data.nodes[e[0]].name + "->" + data.nodes[e[1]].name + (e[2] ? "<" + e[2] + ">" : "");
      showTip(evt, name + "\n" + (m.method || "score").toUpperCase() + " score " + fmt(g.scores[+k]) + "  (rank " + g._rank[+k] + " of " + E + ")" +
        "\nexact patching " + (g.exact[+k] === null ? "not computed (only the top edges are checked)" : fmt(g.exact[+k])));
    });
    gNodes.addEventListener("mousemove", function (evt) {
      var node = evt.target.closest ? evt.target.closest(".wb-node") : null;
      if (!node) { return; }
      var k = data.nodes.findIndex(function (n) { return n.name === node.getAttribute("data-node"); });
      var g = cur(), kept = pruned(data, g._order, state.n), into = 0, out = 0, sIn = 0, sOut = 0;
      kept.forEach(function (e) {
        if (data.edges[e][1] === k) { into++; sIn += g.scores[e]; }
        if (data.edges[e][0] === k) { out++; sOut += g.scores[e]; }
      });
      showTip(evt, data.nodes[k].name + "\n" + into + " edges in (sum of scores " + fmt(sIn) + ")\n" + out +
        " edges out (sum of scores " + fmt(sOut) + ")\nclick: highlight the paths through it");
    });
    [gEdges, gNodes].forEach(function (g) { g.addEventListener("mouseleave", function () { tip.style.display = "none"; }); });
    gNodes.addEventListener("click", function (evt) {
      var node = evt.target.closest ? evt.target.closest(".wb-node") : null;
      if (!node) { return; }
      var k = data.nodes.findIndex(function (n) { return n.name === node.getAttribute("data-node"); });
      state.selected = state.selected === k ? null : k;
      evt.stopPropagation();
      draw();
    });
    s.addEventListener("click", function (evt) {
      if (evt.target.classList && evt.target.classList.contains("wb-background")) { state.selected = null; draw(); }
    });
    nInput.addEventListener("input", function () { state.n = +nInput.value; draw(); });
    if (stepInput) {
      stepInput.addEventListener("input", function () { state.g = +stepInput.value; drawCurve(); draw(); });
    }
    drawCurve();
    draw();
  }

  window.WorkbenchCircuitGraph = { render: render, pruned: pruned };
})();
