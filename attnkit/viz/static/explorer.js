// attnkit explorer: asks the server for pooled views of one head's pattern and draws them.
// Tokens are drawn with fillText or inserted with textContent, never as HTML.
(function () {
  "use strict";
  var about = JSON.parse(document.getElementById("attnkit-about").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var canvas = $("grid"), ctx = canvas.getContext("2d");
  var LABELS = 48;  // token labels are drawn when a view shows at most this many tokens a side
  var state = { id: null, tokens: [], n: 0, layer: 0, head: 0, notes: true, view: null,
                region: null, stack: [], hoverQuery: null };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fillSelect(s, count) {
    for (var i = 0; i < count; i++) {
      var o = el("option", null, String(i));
      o.value = String(i);
      s.appendChild(o);
    }
  }
  function showError(message) { $("error").textContent = message || ""; }
  function get(url) {
    return fetch(url).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
        return body;
      });
    });
  }

  function capture() {
    showError("");
    $("status").textContent = "running the model…";
    fetch("/api/capture", { method: "POST", headers: { "Content-Type": "application/json" },
                            body: JSON.stringify({ text: $("text").value }) })
      .then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
          return body;
        });
      })
      .then(function (body) {
        state.id = body.id; state.tokens = body.tokens; state.n = body.n;
        state.region = [0, body.n, 0, body.n]; state.stack = [];
        load();
      })
      .catch(function (e) { showError(e.message); $("status").textContent = ""; });
  }

  function load() {
    if (!state.id) return;
    var g = state.region;
    var url = "/api/view?id=" + state.id + "&layer=" + state.layer + "&head=" + state.head +
      "&r0=" + g[0] + "&r1=" + g[1] + "&c0=" + g[2] + "&c1=" + g[3] + "&reduce=" + $("reduce").value;
    $("status").textContent = "computing…";
    get(url).then(function (view) {
      state.view = view;
      draw();
      var exact = view.row_block === 1 && view.col_block === 1;
      $("status").textContent = state.n + " tokens · layer " + state.layer + " · head " + state.head +
        " · queries " + g[0] + "–" + (g[1] - 1) + ", keys " + g[2] + "–" + (g[3] - 1) +
        (exact ? " · exact weights" : " · blocks of " + view.row_block + "×" + view.col_block +
         " pooled by " + view.reduce);
      canvas.dataset.layer = state.layer;
      canvas.dataset.head = state.head;
      canvas.dataset.exact = exact ? "1" : "0";
      document.body.dataset.ready = "1";
    }).catch(function (e) { showError(e.message); });
  }

  function color(w) {
    var t = Math.sqrt(Math.max(0, Math.min(1, w)));
    return "rgb(" + Math.round(247 - t * 239) + "," + Math.round(251 - t * 203) + "," + Math.round(255 - t * 148) + ")";
  }

  // geometry of the current drawing: margins, cell sizes; x = columns, y = rows
  function layout() {
    var v = state.view, nq = v.values.length, nk = v.values[0].length;
    var labels = v.row_block === 1 && v.col_block === 1 && Math.max(nq, nk) <= LABELS;
    var m = labels ? 110 : 24;
    var cols = state.notes ? nq : nk, rows = state.notes ? nk : nq;
    return { m: m, labels: labels, cols: cols, rows: rows,
             cw: (canvas.width - m - 4) / cols, ch: (canvas.height - m - 4) / rows };
  }
  function cellAt(a, b) {  // (query block, key block) → [row, col] in the drawing
    return state.notes ? [b, a] : [a, b];
  }

  function draw() {
    var v = state.view, L = layout();
    // block means are small (a query's weights spread over many keys): scale to the view's largest
    var top = 1;
    if (v.reduce === "mean") {
      top = 0;
      v.values.forEach(function (row) { row.forEach(function (w) { if (w > top) top = w; }); });
      top = top || 1;
    }
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    for (var a = 0; a < v.values.length; a++) {
      for (var b = 0; b < v.values[a].length; b++) {
        var rc = cellAt(a, b), x = L.m + rc[1] * L.cw, y = L.m + rc[0] * L.ch;
        var qLast = Math.min(v.rows[1], v.rows[0] + (a + 1) * v.row_block) - 1;
        var kFirst = v.cols[0] + b * v.col_block;
        var hidden = about.causal && kFirst > qLast;
        ctx.fillStyle = hidden ? "#d9d9d9" : color(v.values[a][b] / top);
        ctx.fillRect(x, y, Math.ceil(L.cw), Math.ceil(L.ch));
      }
    }
    ctx.fillStyle = "#1b2733";
    ctx.font = "bold 12px system-ui, sans-serif";
    ctx.fillText(state.notes ? "queries →" : "keys →", L.m, 14);
    ctx.save();
    ctx.translate(12, L.m + 60);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(state.notes ? "keys ↓" : "queries ↓", -60, 0);
    ctx.restore();
    if (L.labels) {
      ctx.font = "11px system-ui, sans-serif";
      var rowStart = state.notes ? v.cols[0] : v.rows[0], colStart = state.notes ? v.rows[0] : v.cols[0];
      for (var r = 0; r < L.rows; r++) {
        ctx.textAlign = "right";
        ctx.fillText(state.tokens[rowStart + r].slice(0, 14), L.m - 4, L.m + (r + 0.5) * L.ch + 4);
      }
      for (var c = 0; c < L.cols; c++) {
        ctx.save();
        ctx.translate(L.m + (c + 0.5) * L.cw + 4, L.m - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "left";
        ctx.fillText(state.tokens[colStart + c].slice(0, 14), 0, 0);
        ctx.restore();
      }
      ctx.textAlign = "left";
    }
  }

  // which query/key block is under the mouse, or null
  function pick(e) {
    if (!state.view) return null;
    var box = canvas.getBoundingClientRect(), L = layout(), v = state.view;
    var x = (e.clientX - box.left) * canvas.width / box.width - L.m;
    var y = (e.clientY - box.top) * canvas.height / box.height - L.m;
    var c = Math.floor(x / L.cw), r = Math.floor(y / L.ch);
    if (c < 0 || r < 0 || c >= L.cols || r >= L.rows) return null;
    var a = state.notes ? c : r, b = state.notes ? r : c;
    var q0 = v.rows[0] + a * v.row_block, k0 = v.cols[0] + b * v.col_block;
    return { a: a, b: b, q0: q0, q1: Math.min(v.rows[1], q0 + v.row_block),
             k0: k0, k1: Math.min(v.cols[1], k0 + v.col_block), w: v.values[a][b] };
  }

  function showTop(q) {
    if (state.hoverQuery === q) return;
    state.hoverQuery = q;
    get("/api/top?id=" + state.id + "&layer=" + state.layer + "&head=" + state.head + "&query=" + q)
      .then(function (body) {
        if (state.hoverQuery !== q) return;
        var box = $("top");
        box.textContent = "";
        box.appendChild(el("h2", null, "query " + q + ": " + body.token));
        box.appendChild(el("div", "sub", "its best keys"));
        var ol = el("ol");
        body.keys.forEach(function (x) {
          var li = el("li", "weight");
          li.appendChild(el("span", "tok", x.token + " (" + x.key + ")"));
          li.appendChild(el("span", "w", " " + x.weight.toFixed(3)));
          var bar = el("span", "bar");
          bar.style.width = Math.round(x.weight * 120) + "px";
          li.appendChild(bar);
          ol.appendChild(li);
        });
        box.appendChild(ol);
      }).catch(function (e) { showError(e.message); });
  }

  canvas.addEventListener("mousemove", function (e) {
    var p = pick(e);
    if (!p) return;
    var tok = function (i) { return "“" + state.tokens[i] + "” (" + i + ")"; };
    if (p.q1 - p.q0 === 1 && p.k1 - p.k0 === 1) {
      $("hover").textContent = "query " + tok(p.q0) + " · key " + tok(p.k0) + " · weight " + p.w.toFixed(4);
    } else {
      $("hover").textContent = "queries " + p.q0 + "–" + (p.q1 - 1) + " × keys " + p.k0 + "–" +
        (p.k1 - 1) + " · " + state.view.reduce + " weight " + p.w.toFixed(4);
    }
    if (p.q1 - p.q0 === 1) showTop(p.q0);
  });
  canvas.addEventListener("click", function (e) {
    var p = pick(e), g = state.region;
    if (!p || (g[1] - g[0] <= 8 && g[3] - g[2] <= 8)) return;
    // zoom 4x on each side around the clicked block
    var zoom = function (lo, hi, at0, at1) {
      var span = Math.max(8, Math.ceil((hi - lo) / 4)), mid = Math.floor((at0 + at1) / 2);
      var start = Math.max(lo, Math.min(hi - span, mid - Math.floor(span / 2)));
      return [start, Math.min(hi, start + span)];
    };
    var rows = zoom(g[0], g[1], p.q0, p.q1), cols = zoom(g[2], g[3], p.k0, p.k1);
    state.stack.push(g);
    state.region = [rows[0], rows[1], cols[0], cols[1]];
    load();
  });
  $("zoomout").addEventListener("click", function () {
    if (state.stack.length) { state.region = state.stack.pop(); load(); }
  });
  $("whole").addEventListener("click", function () {
    if (state.id) { state.region = [0, state.n, 0, state.n]; state.stack = []; load(); }
  });
  $("flip").addEventListener("click", function () {
    state.notes = !state.notes;
    if (state.view) draw();
  });
  $("run").addEventListener("click", capture);
  $("layer").addEventListener("change", function () { state.layer = parseInt($("layer").value, 10); state.hoverQuery = null; load(); });
  $("head").addEventListener("change", function () { state.head = parseInt($("head").value, 10); state.hoverQuery = null; load(); });
  $("reduce").addEventListener("change", load);

  $("model").textContent = about.model + " · " + about.n_layers + " layers × " + about.n_heads +
    " heads · up to " + about.max_tokens + " tokens";
  fillSelect($("layer"), about.n_layers);
  fillSelect($("head"), about.n_heads);
  document.body.dataset.loaded = "1";
})();
