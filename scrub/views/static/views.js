/* scrub views: every element with class "scrub-view" holds its data in a child JSON script element
   and is drawn here once (data-ready marks it). No network, no libraries: SVG and canvas only. */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var CHANNEL_COLOURS = {q: "#1f77b4", k: "#ff7f0e", v: "#2ca02c", in: "#7f7f7f"};
  var CHANNEL_OFFSETS = {q: -6, k: 0, v: 6, in: 0};

  function el(tag, attrs, parent, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }
  function svg(tag, attrs, parent) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }
  function fmt(x, digits) {
    if (x === null || x === undefined || !isFinite(x)) return "n/a";
    return Number(x).toFixed(digits === undefined ? 3 : digits);
  }
  function interval(low, high) {
    return (low === null || low === undefined) ? "" : " [95% CI " + fmt(low) + ", " + fmt(high) + "]";
  }
  function tooltip() {
    var tip = document.getElementById("scrub-tooltip");
    if (!tip) tip = el("div", {id: "scrub-tooltip", "class": "scrub-tooltip"}, document.body);
    return {
      show: function (event, text) {
        tip.textContent = text;
        tip.style.display = "block";
        tip.style.left = (event.pageX + 14) + "px";
        tip.style.top = (event.pageY + 10) + "px";
      },
      hide: function () { tip.style.display = "none"; }
    };
  }
  /* blue (negative) - white - red (positive), t in [-1, 1] */
  function diverging(t) {
    t = Math.max(-1, Math.min(1, t));
    var a = Math.abs(t), r, g, b;
    if (t >= 0) { r = 255; g = Math.round(255 - 180 * a); b = Math.round(255 - 200 * a); }
    else { r = Math.round(255 - 200 * a); g = Math.round(255 - 130 * a); b = 255; }
    return "rgb(" + r + "," + g + "," + b + ")";
  }
  /* whether text on an "rgb(r,g,b)" colour should be white */
  function dark(colour) {
    var m = /rgb\((\d+),(\d+),(\d+)\)/.exec(colour);
    return !!m && 0.299 * m[1] + 0.587 * m[2] + 0.114 * m[3] < 140;
  }
  /* round tick positions between lo and hi, about n of them */
  function ticks(lo, hi, n) {
    var raw = (hi - lo) / n, power = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 2.5, 5, 10].map(function (m) { return m * power; }).filter(function (s) { return s >= raw; })[0];
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Math.abs(v) < 1e-12 ? 0 : v);
    return out;
  }
  /* white to dark blue, t in [0, 1] */
  function sequential(t) {
    t = Math.max(0, Math.min(1, t));
    return "rgb(" + Math.round(255 - 222 * t) + "," + Math.round(255 - 180 * t) + "," + Math.round(255 - 120 * t) + ")";
  }

  /* ---- the graph: components by layer, edges by input channel ---- */
  function drawGraph(root, data) {
    var tip = tooltip();
    var controls = el("div", {"class": "scrub-controls"}, root);
    var valued = data.edges.filter(function (e) { return e.value !== null && e.value !== undefined; });
    var kInput = null, resampled = null;
    if (valued.length) {
      el("label", {"for": root.id + "-k"}, controls, "top k edges by |" + data.value_label + "|: ");
      kInput = el("input", {type: "range", min: "1", max: String(valued.length), id: root.id + "-k",
                            value: String(Math.min(data.top_k, valued.length)), "class": "scrub-topk"}, controls);
      var kText = el("span", {"class": "scrub-k-value"}, controls);
    }
    var nResampled = data.edges.filter(function (e) { return !e.claimed; }).length;  /* faint: unclaimed edges */
    if (nResampled) {
      var lab = el("label", {}, controls);
      resampled = el("input", {type: "checkbox", "class": "scrub-show-resampled"}, lab);
      resampled.checked = nResampled <= data.resampled_limit;
      lab.appendChild(document.createTextNode(" show the " + nResampled + " " + (data.faint_label || "resampled inputs") +
                                              " (faint)"));
    }
    var legend = el("div", {"class": "scrub-legend"}, controls);
    ["q", "k", "v", "in"].forEach(function (c) {
      var item = el("span", {"class": "scrub-legend-item"}, legend);
      el("span", {"class": "scrub-swatch", style: "background:" + CHANNEL_COLOURS[c]}, item);
      item.appendChild(document.createTextNode(c === "in" ? "MLP/logits input" : c.toUpperCase() + " input"));
    });
    var cols = {};
    data.nodes.forEach(function (n) { (cols[n.col] = cols[n.col] || []).push(n); });
    var colKeys = Object.keys(cols).map(Number).sort(function (a, b) { return a - b; });
    var tallest = Math.max.apply(null, colKeys.map(function (c) { return cols[c].length; }));
    var dx = Math.max(70, Math.min(240, 1000 / Math.max(1, colKeys.length - 1)));  /* fill the width, scroll past 15 */
    var dy = 30, width = 60 + dx * (colKeys.length - 1) + 80, height = 30 + dy * tallest;
    var pos = {};
    colKeys.forEach(function (c, i) {
      var column = cols[c], top = (height - dy * column.length) / 2 + dy / 2;
      column.forEach(function (n, j) { pos[n.id] = {x: 40 + dx * i, y: top + dy * j}; });
    });
    var box = el("div", {"class": "scrub-graph-box"}, root);
    var canvas = svg("svg", {width: width, height: height, "class": "scrub-graph", viewBox: "0 0 " + width + " " + height}, box);
    var edgeLayer = svg("g", {}, canvas), nodeLayer = svg("g", {}, canvas);
    var sorted = valued.slice().sort(function (a, b) { return Math.abs(b.value) - Math.abs(a.value); });
    function render() {
      while (edgeLayer.firstChild) edgeLayer.removeChild(edgeLayer.firstChild);
      var faint = !!(resampled && resampled.checked);
      var candidates = sorted.filter(function (e) { return e.claimed || faint; });  /* the slider ranks these */
      var k = kInput ? Number(kInput.value) : 0;
      if (kInput) kText.textContent = String(Math.min(k, candidates.length)) + " of " + candidates.length;
      var shown = candidates.slice(0, k);
      var biggest = shown.length ? Math.abs(shown[0].value) || 1 : 1;
      var rest = data.edges.filter(function (e) { return e.value === null && (e.claimed || faint); });
      var used = {};
      rest.concat(shown).forEach(function (e) {
        var a = pos[e.source], b = pos[e.target];
        if (!a || !b) return;
        used[e.source] = used[e.target] = true;
        var width = e.value === null ? (e.claimed ? 2.5 : 1) : 1 + 5 * Math.abs(e.value) / biggest;
        var mid = (a.x + b.x) / 2, by = b.y + (CHANNEL_OFFSETS[e.channel] || 0);  /* q, k, v enter apart */
        var path = svg("path", {d: "M" + (a.x + 22) + "," + a.y + " C" + mid + "," + a.y + " " + mid + "," + by + " " +
                                   (b.x - 22) + "," + by,
                                stroke: CHANNEL_COLOURS[e.channel] || "#555", "stroke-width": width, fill: "none",
                                "class": "scrub-edge " + (e.claimed ? "scrub-claimed" : "scrub-resampled") +
                                         (e.status ? " scrub-" + e.status : "")}, edgeLayer);
        if (e.status === "uncertain") path.setAttribute("stroke-dasharray", "2,3");  /* dotted: uncertain */
        else if (e.value !== null && e.value < 0) path.setAttribute("stroke-dasharray", "5,3");
        var text = e.source + " \u2192 " + e.target + (e.channel === "in" ? "" : ":" + e.channel) +
          (e.value === null ? (e.status ? "" : e.claimed ? "  (claimed)" : "  (resampled)") :
            "  " + (e.label || data.value_label) + " " + fmt(e.value, 4) + interval(e.low, e.high)) +
          (e.note ? "\n" + e.note : "");
        path.addEventListener("mousemove", function (ev) { tip.show(ev, text); });
        path.addEventListener("mouseleave", tip.hide);
      });
      Array.prototype.forEach.call(nodeLayer.childNodes, function (g) {
        g.setAttribute("class", "scrub-node" + (used[g.getAttribute("data-id")] || g.getAttribute("data-claimed") ? "" : " scrub-idle"));
      });
    }
    data.nodes.forEach(function (n) {
      var p = pos[n.id];
      var g = svg("g", {"data-id": n.id, transform: "translate(" + p.x + "," + p.y + ")"}, nodeLayer);
      if (n.claimed) g.setAttribute("data-claimed", "1");
      svg("rect", {x: -22, y: -10, width: 44, height: 20, rx: 5, "class": "scrub-node-box scrub-kind-" + n.kind +
                   (n.claimed ? " scrub-node-claimed" : "")}, g);
      var label = svg("text", {x: 0, y: 4, "text-anchor": "middle"}, g);
      label.textContent = n.label.length > 9 ? n.label.slice(0, 8) + "\u2026" : n.label;
      g.addEventListener("mousemove", function (ev) { tip.show(ev, n.id + (n.note ? "  " + n.note : "")); });
      g.addEventListener("mouseleave", tip.hide);
    });
    if (kInput) kInput.addEventListener("input", render);
    if (resampled) resampled.addEventListener("change", render);
    render();
  }

  /* ---- the token view: text coloured by scrubbed - clean per token ---- */
  function drawTokens(root, data) {
    var tip = tooltip();
    var controls = el("div", {"class": "scrub-controls"}, root);
    el("label", {"for": root.id + "-pick"}, controls, "example: ");
    var pick = el("select", {id: root.id + "-pick", "class": "scrub-pick"}, controls);
    data.examples.forEach(function (ex, i) {
      el("option", {value: String(i)}, pick, ex.label + " \u2014 #" + ex.index + ", " + data.recovered_label + " " +
         fmt(ex.recovered, 2));
    });
    var scale = data.scale || 1;
    var key = el("div", {"class": "scrub-legend"}, controls);
    [-1, -0.5, 0, 0.5, 1].forEach(function (t) {
      var item = el("span", {"class": "scrub-legend-item"}, key);
      el("span", {"class": "scrub-swatch", style: "background:" + diverging(t)}, item);
      item.appendChild(document.createTextNode((t > 0 ? "+" : "") + fmt(t * scale, 2)));
    });
    key.appendChild(document.createTextNode("  scrubbed \u2212 clean " + data.metric + " (red: worse than clean)"));
    var summary = el("div", {"class": "scrub-example-summary"}, root);
    var text = el("div", {"class": "scrub-text"}, root);
    function show(i) {
      var ex = data.examples[i];
      summary.textContent = ex.label + ": example #" + ex.index + ", mean " + data.metric + " clean " +
        fmt(ex.mean_clean) + ", scrubbed " + fmt(ex.mean_scrubbed) + ", baseline " + fmt(ex.mean_baseline) + "; " +
        data.recovered_label + " " + fmt(ex.recovered, 3) + " (" + ex.n_scored + " scored tokens)";
      while (text.firstChild) text.removeChild(text.firstChild);
      ex.tokens.forEach(function (tok, t) {
        var span = el("span", {"class": "scrub-token"}, text, tok.replace(/\n/g, "\u21b5\n"));
        var d = t > 0 ? ex.delta[t - 1] : null;
        if (t === 0) { span.className += " scrub-unscored"; return; }
        if (d === null) span.className += " scrub-unscored";
        else span.style.background = diverging(d / scale);
        var info = "token " + t + " " + JSON.stringify(tok) + (d === null ? "  (not scored)" : "") +
          "\npredicted at position " + (t - 1) + ":" +
          "\n  clean:    " + ex.clean_top[t - 1] + "   " + data.metric + " " + fmt(ex.clean[t - 1]) +
          "\n  scrubbed: " + ex.scrubbed_top[t - 1] + "   " + data.metric + " " + fmt(ex.scrubbed[t - 1]) +
          (d === null ? "" : "\n  \u0394 = " + fmt(d));
        span.addEventListener("mousemove", function (ev) { tip.show(ev, info); });
        span.addEventListener("mouseleave", tip.hide);
      });
    }
    pick.addEventListener("change", function () { show(Number(pick.value)); });
    show(0);
  }

  /* ---- a matrix on a canvas (heatmaps and attention patterns), hover shows the cell; axis labels in the
     margins when the cells are large enough to read them ---- */
  function matrixCanvas(parent, values, opts) {
    var rows = values.length, cols = rows ? values[0].length : 0;
    var cell = Math.max(2, Math.min(40, Math.floor(opts.size / Math.max(rows, cols, 1))));
    var labelled = !!opts.rowLabels && cell >= 12;
    var mx = labelled ? 64 : 0, my = labelled ? 40 : 0;
    var canvas = el("canvas", {width: String(mx + cols * cell), height: String(my + rows * cell), "class": opts.cls}, parent);
    var ctx = canvas.getContext("2d");
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.font = "10px sans-serif";
    for (var i = 0; i < rows; i++) {
      for (var j = 0; j < cols; j++) {
        var v = values[i][j];
        var fill = (v === null || !isFinite(v)) ? "#eeeeee" : opts.colour(v);
        ctx.fillStyle = fill;
        ctx.fillRect(mx + j * cell, my + i * cell, cell, cell);
        if (opts.labels && cell >= 34 && v !== null && isFinite(v)) {
          ctx.fillStyle = dark(fill) ? "#ffffff" : "#111111";
          ctx.fillText(fmt(v, 2), mx + j * cell + 4, my + i * cell + cell / 2 + 3);
        }
      }
    }
    if (labelled) {
      ctx.fillStyle = "#222";
      ctx.textAlign = "right";
      for (var r = 0; r < rows; r++) ctx.fillText(String(opts.rowLabels[r]), mx - 4, my + r * cell + cell / 2 + 3);
      for (var c = 0; c < cols; c++) {
        ctx.save();
        ctx.translate(mx + c * cell + cell / 2 + 3, my - 4);
        ctx.rotate(-Math.PI / 3);
        ctx.textAlign = "left";
        ctx.fillText(String(opts.colLabels[c]), 0, 0);
        ctx.restore();
      }
    }
    var tip = tooltip();
    canvas.addEventListener("mousemove", function (ev) {
      var box = canvas.getBoundingClientRect();
      var j = Math.floor((ev.clientX - box.left - mx) / cell), i = Math.floor((ev.clientY - box.top - my) / cell);
      if (i < 0 || j < 0 || i >= rows || j >= cols) { tip.hide(); return; }
      tip.show(ev, opts.describe(i, j));
    });
    canvas.addEventListener("mouseleave", tip.hide);
    return canvas;
  }

  function drawHeatmap(root, data) {
    var controls = el("div", {"class": "scrub-controls"}, root);
    var pick = null;
    if (data.matrices.length > 1) {
      el("label", {}, controls, "show: ");
      pick = el("select", {"class": "scrub-pick"}, controls);
      data.matrices.forEach(function (m, i) { el("option", {value: String(i)}, pick, m.name); });
    }
    var note = el("div", {"class": "scrub-note"}, root);
    var box = el("div", {"class": "scrub-heatmap-box"}, root);
    var scaleText = el("div", {"class": "scrub-note"}, root);
    function show(index) {
      var m = data.matrices[index];
      while (box.firstChild) box.removeChild(box.firstChild);
      note.textContent = (m.note ? m.note + " " : "") + "Rows: " + m.row_title + "; columns: " + m.col_title + ".";
      var finite = [].concat.apply([], m.values).filter(function (v) { return v !== null && isFinite(v); });
      var lo = Math.min.apply(null, finite.concat([0])), hi = Math.max.apply(null, finite.concat([0]));
      var span = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
      var colour = lo < 0 ? function (v) { return diverging(v / span); } : function (v) { return sequential(v / (hi || 1)); };
      matrixCanvas(box, m.values, {size: 640, cls: "scrub-heatmap", labels: true, colour: colour,
        rowLabels: m.rows, colLabels: m.cols, describe: function (i, j) {
          var low = m.low ? m.low[i][j] : null, high = m.high ? m.high[i][j] : null;
          return m.row_title + " " + m.rows[i] + ", " + m.col_title + " " + m.cols[j] + ": " + m.name + " " +
            fmt(m.values[i][j], 4) + interval(low, high);
        }});
      scaleText.textContent = "colour: " + (lo < 0 ? "blue " + fmt(-span, 3) + " \u2013 white 0 \u2013 red +" + fmt(span, 3)
                                                  : "white 0 \u2013 blue " + fmt(hi, 3)) + "; hover a cell for its value";
    }
    if (pick) pick.addEventListener("change", function () { show(Number(pick.value)); });
    show(0);
  }

  function drawAttention(root, data) {
    var controls = el("div", {"class": "scrub-controls"}, root);
    el("label", {}, controls, "head: ");
    var pick = el("select", {"class": "scrub-pick"}, controls);
    data.heads.forEach(function (h, i) { el("option", {value: String(i)}, pick, h.name); });
    var note = el("div", {"class": "scrub-note"}, root);
    var box = el("div", {"class": "scrub-attention-box"}, root);
    var top = 1;  /* the colour scale ends at the largest weight off the first (BOS) column of either panel */
    function panel(title, pattern) {
      var p = el("div", {"class": "scrub-attention-panel"}, box);
      el("div", {"class": "scrub-panel-title"}, p, title);
      if (!pattern) { el("div", {"class": "scrub-note"}, p, "not recomputed in the scrubbed run"); return; }
      matrixCanvas(p, pattern, {size: 520, cls: "scrub-attention",
                                colour: function (v) { return sequential(Math.sqrt(v / top)); },
                                describe: function (i, j) {
        return "query " + i + " " + JSON.stringify(data.tokens[i]) + " \u2192 key " + j + " " +
          JSON.stringify(data.tokens[j]) + ": " + fmt(pattern[i][j], 3);
      }});
    }
    function show(i) {
      var h = data.heads[i];
      while (box.firstChild) box.removeChild(box.firstChild);
      top = 0;
      [h.clean, h.scrubbed].forEach(function (m) {
        (m || []).forEach(function (row) { row.slice(1).forEach(function (v) { if (v !== null && v > top) top = v; }); });
      });
      top = top || 1;
      note.textContent = "example #" + data.index + "; rows: queries, columns: keys; colour: square root of the weight, " +
        "white 0 \u2013 blue " + fmt(top, 2) + " (larger weights, often on the first token, saturate). " + (h.note || "");
      panel("clean", h.clean);
      panel("scrubbed", h.scrubbed);
    }
    pick.addEventListener("change", function () { show(Number(pick.value)); });
    show(0);
  }

  function drawHistogram(root, data) {
    var tip = tooltip();
    var values = data.values.filter(function (v) { return v !== null && isFinite(v); }).sort(function (a, b) { return a - b; });
    var note = el("div", {"class": "scrub-note"}, root);
    if (!values.length) { note.textContent = "no finite values"; return; }
    var q = function (p) { return values[Math.min(values.length - 1, Math.floor(p * (values.length - 1)))]; };
    var lo = Math.min(q(0.02), data.overall === null ? Infinity : data.overall);
    var hi = Math.max(q(0.98), data.overall === null ? -Infinity : data.overall);
    if (hi <= lo) { hi = lo + 1; }
    var nBins = Math.min(40, Math.max(8, Math.round(Math.sqrt(values.length) * 2)));
    var step = (hi - lo) / nBins, counts = [];
    for (var b = 0; b < nBins; b++) counts.push(0);
    values.forEach(function (v) { counts[Math.max(0, Math.min(nBins - 1, Math.floor((v - lo) / step)))] += 1; });
    var W = 720, H = 240, left = 48, bottom = 30, top = 10;
    var most = Math.max.apply(null, counts);
    var canvas = svg("svg", {width: W, height: H, "class": "scrub-histogram", viewBox: "0 0 " + W + " " + H}, root);
    var x = function (v) { return left + (v - lo) / (hi - lo) * (W - left - 10); };
    var y = function (c) { return H - bottom - c / most * (H - bottom - top); };
    counts.forEach(function (c, i) {
      var a = lo + i * step;
      var bar = svg("rect", {x: x(a) + 0.5, y: y(c), width: Math.max(1, x(a + step) - x(a) - 1), height: H - bottom - y(c),
                             "class": "scrub-bar"}, canvas);
      var edge = i === 0 ? "\u2264 " + fmt(a + step, 2) : i === nBins - 1 ? "\u2265 " + fmt(a, 2) :
        "[" + fmt(a, 2) + ", " + fmt(a + step, 2) + ")";
      bar.addEventListener("mousemove", function (ev) { tip.show(ev, c + " examples with " + data.label + " " + edge); });
      bar.addEventListener("mouseleave", tip.hide);
    });
    if (data.ci_low !== null && data.ci_high !== null) {  /* over the bars, translucent */
      svg("rect", {x: x(Math.max(lo, data.ci_low)), y: top, height: H - bottom - top, "class": "scrub-ci",
                   width: Math.max(1, x(Math.min(hi, data.ci_high)) - x(Math.max(lo, data.ci_low)))}, canvas);
    }
    [0, 1].forEach(function (v) {
      if (v >= lo && v <= hi) svg("line", {x1: x(v), x2: x(v), y1: top, y2: H - bottom, "class": "scrub-ref"}, canvas);
    });
    svg("line", {x1: left, x2: left, y1: top, y2: H - bottom, stroke: "#333"}, canvas);
    ticks(0, most, 4).forEach(function (c) {
      var label = svg("text", {x: left - 5, y: y(c) + 3, "text-anchor": "end", "class": "scrub-tick"}, canvas);
      label.textContent = String(Math.round(c));
    });
    var axis = svg("text", {x: 10, y: top + (H - bottom - top) / 2, "class": "scrub-tick",
                            transform: "rotate(-90 10," + (top + (H - bottom - top) / 2) + ")", "text-anchor": "middle"}, canvas);
    axis.textContent = "examples";
    if (data.overall !== null) {
      svg("line", {x1: x(data.overall), x2: x(data.overall), y1: top, y2: H - bottom, "class": "scrub-overall"}, canvas);
    }
    svg("line", {x1: left, x2: W - 10, y1: H - bottom, y2: H - bottom, stroke: "#333"}, canvas);
    ticks(lo, hi, 6).forEach(function (v) {
      var label = svg("text", {x: x(v), y: H - bottom + 16, "text-anchor": "middle", "class": "scrub-tick"}, canvas);
      label.textContent = fmt(v, 2);
    });
    note.textContent = values.length + " examples; " + data.label + " (bars), the whole set's value " + fmt(data.overall) +
      " (dark line) with its 95% interval (band); thin lines at 0 (baseline) and 1 (clean). Outliers beyond the 2nd and " +
      "98th percentiles fall in the end bins.";
  }

  /* ---- values with 95% intervals, one row per item and one bar per series (e.g. a ladder of claims) ---- */
  function drawIntervals(root, data) {
    var tip = tooltip();
    var colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"];
    var legend = el("div", {"class": "scrub-legend"}, el("div", {"class": "scrub-controls"}, root));
    data.series.forEach(function (name, i) {
      var item = el("span", {"class": "scrub-legend-item"}, legend);
      el("span", {"class": "scrub-swatch", style: "background:" + colours[i % colours.length]}, item);
      item.appendChild(document.createTextNode(name));
    });
    if (data.rows.some(function (r) { return r.reference !== null && r.reference !== undefined; })) {
      var ref = el("span", {"class": "scrub-legend-item"}, legend);
      el("span", {"class": "scrub-swatch scrub-reference-swatch"}, ref);
      ref.appendChild(document.createTextNode(data.reference_label || "reference"));
    }
    var lo = 0, hi = 1;
    data.rows.forEach(function (r) {
      r.values.forEach(function (v) {
        [v.value, v.low, v.high].forEach(function (x) { if (x !== null && isFinite(x)) { lo = Math.min(lo, x); hi = Math.max(hi, x); } });
      });
    });
    lo = Math.max(lo, data.clip[0]); hi = Math.min(hi, data.clip[1]);
    var nS = data.series.length, band = 8 * nS + 10, labelW = 250, W = 900, top = 10;
    var H = top + band * data.rows.length + 30;
    var canvas = svg("svg", {width: W, height: H, "class": "scrub-intervals", viewBox: "0 0 " + W + " " + H}, root);
    var x = function (v) { return labelW + (Math.max(lo, Math.min(hi, v)) - lo) / (hi - lo) * (W - labelW - 20); };
    [0, 1].forEach(function (v) {
      svg("line", {x1: x(v), x2: x(v), y1: top, y2: H - 28, "class": "scrub-ref"}, canvas);
    });
    ticks(lo, hi, 8).forEach(function (v) {
      var tick = svg("text", {x: x(v), y: H - 12, "text-anchor": "middle", "class": "scrub-tick"}, canvas);
      tick.textContent = fmt(v, 2);
    });
    data.rows.forEach(function (r, i) {
      var y0 = top + band * i;
      var label = svg("text", {x: labelW - 8, y: y0 + band / 2 + 3, "text-anchor": "end", "class": "scrub-row-label"}, canvas);
      label.textContent = r.label.length > 42 ? r.label.slice(0, 41) + "\u2026" : r.label;
      r.values.forEach(function (v, j) {
        if (v.value === null || !isFinite(v.value)) return;
        var y = y0 + 6 + 8 * j, colour = colours[j % colours.length];
        var bar = svg("rect", {x: Math.min(x(0), x(v.value)), y: y, width: Math.max(1, Math.abs(x(v.value) - x(0))), height: 6,
                               fill: colour, "class": "scrub-interval-bar"}, canvas);
        if (v.low !== null && v.high !== null) {
          svg("line", {x1: x(v.low), x2: x(v.high), y1: y + 3, y2: y + 3, stroke: "#222", "stroke-width": 1.2}, canvas);
        }
        var text = r.label + " \u2014 " + data.series[j] + ": " + data.label + " " + fmt(v.value) + interval(v.low, v.high) +
          (v.note ? "\n" + v.note : "") + (r.reference !== null && r.reference !== undefined ?
            "\n" + (data.reference_label || "reference") + ": " + fmt(r.reference, 2) : "");
        bar.addEventListener("mousemove", function (ev) { tip.show(ev, text); });
        bar.addEventListener("mouseleave", tip.hide);
      });
      if (r.reference !== null && r.reference !== undefined) {
        svg("path", {d: "M" + x(r.reference) + "," + (y0 + 3) + " l4,-5 l-8,0 z", "class": "scrub-reference"}, canvas);
      }
    });
  }

  /* ---- lines through points (e.g. a faithfulness curve): one polyline per series, hover a point ---- */
  function drawLines(root, data) {
    var tip = tooltip();
    var colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"];
    var legend = el("div", {"class": "scrub-legend"}, el("div", {"class": "scrub-controls"}, root));
    data.series.forEach(function (s, i) {
      var item = el("span", {"class": "scrub-legend-item"}, legend);
      el("span", {"class": "scrub-swatch", style: "background:" + colours[i % colours.length]}, item);
      item.appendChild(document.createTextNode(s.name));
    });
    var finite = function (v) { return v !== null && v !== undefined && isFinite(v); };
    var xs = [], ys = (data.refs || []).slice();
    data.series.forEach(function (s) {
      s.points.forEach(function (p) { if (finite(p.x) && finite(p.y)) { xs.push(p.x); ys.push(p.y); } });
    });
    if (!xs.length) { el("div", {"class": "scrub-note"}, root, "no finite values"); return; }
    var xlo = Math.min.apply(null, xs), xhi = Math.max.apply(null, xs);
    var ylo = Math.min.apply(null, ys), yhi = Math.max.apply(null, ys);
    if (xhi <= xlo) xhi = xlo + 1;
    if (yhi <= ylo) yhi = ylo + 1;
    var pad = 0.05 * (yhi - ylo);
    ylo -= pad; yhi += pad;
    var W = 720, H = 300, left = 52, right = 14, top = 10, bottom = 40;
    var canvas = svg("svg", {width: W, height: H, "class": "scrub-lines", viewBox: "0 0 " + W + " " + H}, root);
    var x = function (v) { return left + (v - xlo) / (xhi - xlo) * (W - left - right); };
    var y = function (v) { return H - bottom - (v - ylo) / (yhi - ylo) * (H - bottom - top); };
    (data.refs || []).forEach(function (v) {
      svg("line", {x1: left, x2: W - right, y1: y(v), y2: y(v), "class": "scrub-ref"}, canvas);
    });
    svg("line", {x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, stroke: "#333"}, canvas);
    svg("line", {x1: left, x2: left, y1: top, y2: H - bottom, stroke: "#333"}, canvas);
    ticks(xlo, xhi, 8).forEach(function (v) {
      var t = svg("text", {x: x(v), y: H - bottom + 15, "text-anchor": "middle", "class": "scrub-tick"}, canvas);
      t.textContent = fmt(v, 2);
    });
    ticks(ylo, yhi, 5).forEach(function (v) {
      var t = svg("text", {x: left - 5, y: y(v) + 3, "text-anchor": "end", "class": "scrub-tick"}, canvas);
      t.textContent = fmt(v, 2);
    });
    var xl = svg("text", {x: left + (W - left - right) / 2, y: H - 5, "text-anchor": "middle", "class": "scrub-tick"}, canvas);
    xl.textContent = data.x_label;
    var my = top + (H - bottom - top) / 2;
    var yl = svg("text", {x: 11, y: my, "text-anchor": "middle", "class": "scrub-tick", transform: "rotate(-90 11," + my + ")"}, canvas);
    yl.textContent = data.y_label;
    data.series.forEach(function (s, i) {
      var colour = colours[i % colours.length];
      var kept = s.points.filter(function (p) { return finite(p.x) && finite(p.y); });
      var line = svg("polyline", {points: kept.map(function (p) { return x(p.x) + "," + y(p.y); }).join(" "),
                                  fill: "none", stroke: colour, "stroke-width": 2, "class": "scrub-line"}, canvas);
      if (s.dashed) line.setAttribute("stroke-dasharray", "6,4");
      kept.forEach(function (p) {
        var dot = svg("circle", {cx: x(p.x), cy: y(p.y), r: 4, fill: colour, "class": "scrub-point"}, canvas);
        var text = s.name + ": " + (p.text || (data.x_label + " " + fmt(p.x) + ", " + data.y_label + " " + fmt(p.y)));
        dot.addEventListener("mousemove", function (ev) { tip.show(ev, text); });
        dot.addEventListener("mouseleave", tip.hide);
      });
    });
  }

  var DRAW = {graph: drawGraph, tokens: drawTokens, heatmap: drawHeatmap, attention: drawAttention,
              histogram: drawHistogram, intervals: drawIntervals, lines: drawLines};

  function init() {
    var roots = document.querySelectorAll(".scrub-view:not([data-ready])");
    Array.prototype.forEach.call(roots, function (root) {
      root.setAttribute("data-ready", "1");
      var payload = root.querySelector("script[type='application/json']");
      var data = JSON.parse(payload.textContent);
      var draw = DRAW[data.kind];
      if (!draw) throw new Error("scrub views: unknown view kind " + data.kind);
      draw(root, data);
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
