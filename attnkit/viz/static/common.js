// attnkit, shared by the standalone page and the explorer: colour scales with their legend, and
// the K·Q panel (the notes' K_i · Q_j for one cell of a real model). Text is always inserted
// with textContent or drawn with fillText, never parsed as HTML.
var AK = (function () {
  "use strict";
  var LOG_FLOOR = 1e-4;  // the log scale's lightest colour: weights at or below 1e-4
  var LONG = 64;  // inputs longer than this open on a scale that shows structure (log)
  var PRODUCTS_SHOWN = 12;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(x, digits) {
    if (x === null || x === undefined) return "−∞";
    if (!isFinite(x)) return x > 0 ? "∞" : "−∞";
    var a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2).replace(/-/g, "−");
    return x.toFixed(digits === undefined ? 4 : digits).replace(/-/g, "−");
  }
  function signed(x) { return (x < 0 ? "−" : "+") + fmt(Math.abs(x)); }

  // ---- colour scales -----------------------------------------------------------------------
  function percentile(values, p) {
    var v = values.filter(function (x) { return x > 0 && isFinite(x); }).sort(function (a, b) { return a - b; });
    if (!v.length) return 0;
    return v[Math.min(v.length - 1, Math.floor(p * v.length))];
  }
  // a scale maps a weight to 0..1 (the colour's depth) and says in words what 1.0 means
  function scale(name, values) {
    if (name === "log") {
      var span = -Math.log10(LOG_FLOOR);
      return { name: name, ref: 1, one: "1.0 = weight 1", zero: "0 = weight ≤ 0.0001",
               t: function (w) { return w <= LOG_FLOOR ? 0 : Math.min(1, (Math.log10(w) + span) / span); } };
    }
    if (name === "auto") {
      var ref = percentile(values, 0.99) || 1;
      return { name: name, ref: ref, zero: "0 = weight 0",
               one: "1.0 = " + fmt(ref) + " (this view's 99th percentile; cells above it at full colour)",
               t: function (w) { return Math.max(0, Math.min(1, w / ref)); } };
    }
    return { name: "linear", ref: 1, one: "1.0 = weight 1", zero: "0 = weight 0",
             t: function (w) { return Math.max(0, Math.min(1, w)); } };
  }
  function defaultScale(n) { return n > LONG ? "log" : "linear"; }
  function rgb(t) {
    return [Math.round(247 - t * 239), Math.round(251 - t * 203), Math.round(255 - t * 148)];
  }
  function color(t) { return "rgb(" + rgb(t).join(",") + ")"; }
  // differences in -1..1: blue where the first is higher, red where the second is
  function diverging(t) {
    var a = Math.min(1, Math.abs(t));
    var c = t >= 0 ? [Math.round(255 - a * 223), Math.round(255 - a * 152), Math.round(255 - a * 75)]
                   : [Math.round(255 - a * 41), Math.round(255 - a * 196), Math.round(255 - a * 196)];
    return "rgb(" + c.join(",") + ")";
  }
  function legend(box, sc, diff) {
    box.textContent = "";
    var bar = el("canvas", "bar");
    bar.width = 160; bar.height = 10;
    var g = bar.getContext("2d");
    for (var x = 0; x < 160; x++) {
      g.fillStyle = diff ? diverging(2 * x / 159 - 1) : color(x / 159);
      g.fillRect(x, 0, 1, 10);
    }
    box.appendChild(el("span", "end", diff ? "−1.0" : "0"));
    box.appendChild(bar);
    box.appendChild(el("span", "end", "1.0"));
    box.appendChild(el("span", "what", sc.one + (diff ? "" : " · " + sc.zero)));
    box.dataset.scale = sc.name;
    box.dataset.one = String(sc.ref);
  }

  // ---- the K·Q panel ------------------------------------------------------------------------
  function bar(value, top, cls) {
    var b = el("span", "bar " + (cls || (value < 0 ? "neg" : "pos")));
    b.style.width = Math.max(1, Math.round(90 * Math.abs(value) / (top || 1))) + "px";
    return b;
  }
  function vectors(w) {  // q and k as bars side by side, one row per dimension
    var d = w.q.length, row = Math.max(3, Math.min(12, Math.floor(480 / d)));
    var c = el("canvas", "vectors");
    c.width = 340; c.height = 22 + d * row;
    var g = c.getContext("2d");
    var top = function (v) { return Math.max.apply(null, v.map(Math.abs)) || 1; };
    var tq = top(w.q), tk = top(w.k), half = 70;
    g.fillStyle = "#1b2733";
    g.font = "bold 11px system-ui, sans-serif";
    g.fillText("Q, query “" + (w.query_token || w.query) + "”", 10, 12);
    g.fillText("K, key “" + (w.key_token || w.key) + "”", 190, 12);
    for (var i = 0; i < d; i++) {
      var y = 20 + i * row;
      g.fillStyle = "#2f6fad";
      var lq = half * w.q[i] / tq;
      g.fillRect(80 + Math.min(0, lq), y, Math.max(1, Math.abs(lq)), row - 1);
      g.fillStyle = "#d9822b";
      var lk = half * w.k[i] / tk;
      g.fillRect(260 + Math.min(0, lk), y, Math.max(1, Math.abs(lk)), row - 1);
      if (row >= 9 || i % Math.ceil(9 / row) === 0) {
        g.fillStyle = "#5a6b7b";
        g.font = Math.min(10, row + 2) + "px system-ui, sans-serif";
        g.fillText(String(i), 160, y + row - 1);
      }
    }
    g.strokeStyle = "#9aa7b4";
    g.beginPath(); g.moveTo(80, 18); g.lineTo(80, c.height); g.moveTo(260, 18); g.lineTo(260, c.height); g.stroke();
    return c;
  }
  function renderWhy(box, w) {
    box.textContent = "";
    var d = w.q.length;
    box.dataset.query = String(w.query); box.dataset.key = String(w.key);
    box.dataset.dot = String(w.dot); box.dataset.scale = String(w.scale);
    box.dataset.score = w.score === null ? "-Infinity" : String(w.score);
    box.dataset.weight = String(w.weight); box.dataset.rank = w.rank === null ? "" : String(w.rank);
    box.dataset.layer = String(w.layer); box.dataset.head = String(w.head);
    box.appendChild(el("h2", null, "K·Q: key “" + w.key_token + "” (" + w.key + ") answering query “" +
                       w.query_token + "” (" + w.query + ")"));
    box.appendChild(el("div", "sub", "layer " + w.layer + " · head " + w.head + " · " + d +
                       "-dimensional query/key space"));
    if (w.words) box.appendChild(el("div", "note", "words “" + w.words.query_word + "” → “" +
                                    w.words.key_word + "”: " + w.words.note));
    if (w.note) box.appendChild(el("div", "note", w.note));
    box.appendChild(vectors(w));
    var sum = el("div", "sum");
    var lines = ["q · k = Σ q_i k_i over " + d + " dims = " + fmt(w.dot)];
    var root = Math.abs(w.scale * Math.sqrt(d) - 1) < 1e-6 ? " (1/√" + d + ")" : "";
    lines.push("× scale " + fmt(w.scale) + root + " = " + fmt(w.dot * w.scale));
    if (w.softcap !== null && w.softcap !== undefined) {
      lines.push("soft-capped: " + fmt(w.softcap) + "·tanh(· / " + fmt(w.softcap) + ") = " +
                 fmt(w.softcap * Math.tanh(w.dot * w.scale / w.softcap)));
    }
    if (w.bias !== null && w.bias !== undefined) lines.push(signed(w.bias) + " bias");
    if (w.masked) {
      lines.push("masked (" + w.mask_reason + "): score −∞, weight 0");
    } else {
      lines.push("score " + fmt(w.score) + " → weight " + fmt(w.weight) + " = exp(score − lse " + fmt(w.lse) + ")");
      lines.push("rank " + w.rank + " of the " + w.n_visible + " keys this query sees");
    }
    lines.forEach(function (t, i) { sum.appendChild(el("div", i === lines.length - 1 ? "last" : null, t)); });
    box.appendChild(sum);

    box.appendChild(el("h3", null, "products q_i · k_i, largest contribution first"));
    var order = w.products.map(function (p, i) { return i; })
      .sort(function (a, b) { return Math.abs(w.products[b]) - Math.abs(w.products[a]); });
    var topP = Math.abs(w.products[order[0]]) || 1;
    var ol = el("ol", "products");
    order.slice(0, PRODUCTS_SHOWN).forEach(function (i) {
      var li = el("li");
      li.dataset.dim = String(i); li.dataset.value = String(w.products[i]);
      li.appendChild(el("span", "lab", "dim " + i + ": " + fmt(w.q[i], 3) + " × " + fmt(w.k[i], 3) + " = " + signed(w.products[i])));
      li.appendChild(bar(w.products[i], topP));
      ol.appendChild(li);
    });
    box.appendChild(ol);
    if (d > PRODUCTS_SHOWN) {
      var rest = order.slice(PRODUCTS_SHOWN).reduce(function (s, i) { return s + w.products[i]; }, 0);
      box.appendChild(el("div", "sub", "the other " + (d - PRODUCTS_SHOWN) + " dims add " + signed(rest)));
    }

    box.appendChild(el("h3", null, "where the softmax puts it among the query's keys"));
    var comp = el("ol", "competitors");
    var topW = w.competitors.length ? w.competitors[0].weight : 1;
    var shown = false;
    w.competitors.forEach(function (c) {
      var li = el("li", c.key === w.key ? "me" : null);
      li.dataset.key = String(c.key); li.dataset.weight = String(c.weight);
      li.dataset.score = c.score === null ? "-Infinity" : String(c.score);
      li.appendChild(el("span", "lab", "“" + c.token + "” (" + c.key + ") score " + fmt(c.score, 3) + " · weight " + fmt(c.weight, 4)));
      li.appendChild(bar(c.weight, topW, "w"));
      comp.appendChild(li);
      if (c.key === w.key) shown = true;
    });
    box.appendChild(comp);
    if (!shown) box.appendChild(el("div", "sub me", w.masked ? "this key is hidden from the query" :
      "this key: rank " + w.rank + ", score " + fmt(w.score, 3) + " · weight " + fmt(w.weight, 4)));

    if (w.bands) {
      box.appendChild(el("h3", null, "rotary bands: q · k by pair of dims turned together"));
      box.appendChild(el("div", "sub", w.rotary + "; fastest-turning pairs first"));
      var topB = Math.max.apply(null, w.bands.map(function (b) { return Math.abs(b.product); })) || 1;
      var bl = el("ol", "bands");
      w.bands.forEach(function (b) {
        var li = el("li");
        li.dataset.pair = String(b.pair); li.dataset.value = String(b.product);
        var speed = b.frequency === null ? "" : " · " + fmt(b.frequency, 4) + " rad/token (a turn every " +
          fmt(2 * Math.PI / b.frequency, 1) + " tokens)";
        li.appendChild(el("span", "lab", "dims " + b.dims[0] + "+" + b.dims[1] + speed + ": " + signed(b.product)));
        li.appendChild(bar(b.product, topB));
        bl.appendChild(li);
      });
      box.appendChild(bl);
      if (w.unrotated) box.appendChild(el("div", "sub", "dims not rotated add " + signed(w.unrotated)));
    }
    box.hidden = false;
  }

  return { el: el, fmt: fmt, scale: scale, defaultScale: defaultScale, rgb: rgb, color: color,
           diverging: diverging, legend: legend, renderWhy: renderWhy, LONG: LONG };
})();
