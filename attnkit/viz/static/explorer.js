// attnkit explorer: asks the server for pooled views of one head's pattern and draws them; the
// K·Q of a clicked cell, every head as thumbnails, words instead of pieces, and the difference of
// two captures. Tokens are drawn with fillText or inserted with textContent, never as HTML.
(function () {
  "use strict";
  var about = JSON.parse(document.getElementById("attnkit-about").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var el = AK.el;
  var canvas = $("grid"), ctx = canvas.getContext("2d");
  var LABELS = 48;  // token labels are drawn when a view shows at most this many tokens a side
  var state = { id: null, session: null, layer: 0, head: 0, notes: true, view: null,
                region: null, stack: [], hoverQuery: null, words: false, scaleChosen: false,
                cell: null, other: null, sessions: {} };

  function showError(message) { $("error").textContent = message || ""; }
  function request(url, options) {
    return fetch(url, options).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
        return body;
      });
    });
  }
  function post(url, body) {
    return request(url, { method: "POST", headers: { "Content-Type": "application/json" },
                          body: JSON.stringify(body) });
  }
  function fillSelect(s, values, value) {
    s.textContent = "";
    values.forEach(function (v) {
      var o = el("option", null, String(v));
      o.value = String(v);
      s.appendChild(o);
    });
    s.value = String(value);
  }
  function labels() { return state.words ? state.session.words.tokens : state.session.tokens; }
  function count() { return labels().length; }
  function spans() { return state.session.words.spans; }
  // does a causal model hide key position k from query position q (in the current units)?
  function hidden(session, qLast, kFirst, words) {
    if (!session.causal) return false;
    if (words) { qLast = session.words.spans[qLast][1] - 1; kFirst = session.words.spans[kFirst][0]; }
    return kFirst > qLast;
  }
  function headQuery() {
    return "id=" + state.id + "&layer=" + state.layer + "&head=" + state.head;
  }

  // ---- which capture is shown ----------------------------------------------------------------
  function remember(session) {
    state.sessions[session.id] = session;
    [$("open"), $("other")].forEach(function (s) {
      if (s.querySelector("option[value='" + session.id + "']")) return;
      var o = el("option", null, (session.kind === "file" ? "file " : "text ") + session.name +
                 " (" + session.n + " tokens)");
      o.value = session.id;
      s.appendChild(o);
    });
  }
  function open(session) {
    remember(session);
    state.session = session; state.id = session.id;
    if (session.layers.indexOf(state.layer) < 0) state.layer = session.layers[0];
    if (session.heads.indexOf(state.head) < 0) state.head = session.heads[0];
    fillSelect($("layer"), session.layers, state.layer);
    fillSelect($("head"), session.heads, state.head);
    $("open").value = session.id;
    if (!state.scaleChosen) $("scale").value = AK.defaultScale(session.n);
    $("about-capture").textContent = session.model + " · " + session.layers.length + " layers × " +
      session.heads.length + " heads · " + session.n + " tokens" + (session.rotary ? " · " + session.rotary : "");
    whole();
    if (!$("overview").hidden) loadOverview();
    if (state.other) loadCompare();
  }
  function whole() {
    state.region = [0, count(), 0, count()]; state.stack = []; state.cell = null;
    state.hoverQuery = null;
    $("kq").hidden = true; $("top").textContent = "";
    load();
  }
  function openId(id) {
    request("/api/session?id=" + id).then(open).catch(function (e) { showError(e.message); });
  }

  function capture() {
    showError("");
    $("status").textContent = "running the model…";
    post("/api/capture", { text: $("text").value })
      .then(open)
      .catch(function (e) { showError(e.message); $("status").textContent = ""; });
  }

  function load() {
    if (!state.id) return;
    var g = state.region;
    var url = "/api/view?" + headQuery() + "&r0=" + g[0] + "&r1=" + g[1] + "&c0=" + g[2] +
      "&c1=" + g[3] + "&reduce=" + $("reduce").value + "&words=" + (state.words ? 1 : 0);
    $("status").textContent = "computing…";
    request(url).then(function (view) {
      state.view = view;
      draw();
      var exact = view.row_block === 1 && view.col_block === 1;
      var unit = state.words ? " words" : " tokens";
      $("status").textContent = count() + unit + " · layer " + state.layer + " · head " + state.head +
        " · queries " + g[0] + "–" + (g[1] - 1) + ", keys " + g[2] + "–" + (g[3] - 1) +
        (exact ? " · exact weights" : " · blocks of " + view.row_block + "×" + view.col_block +
         " pooled by " + view.reduce);
      canvas.dataset.layer = state.layer;
      canvas.dataset.head = state.head;
      canvas.dataset.exact = exact ? "1" : "0";
      canvas.dataset.words = state.words ? "1" : "0";
      markThumb();
      document.body.dataset.ready = "1";
    }).catch(function (e) { showError(e.message); });
  }

  // ---- drawing a view --------------------------------------------------------------------------
  // geometry of a drawing on canvas c: margins, cell sizes; x = columns, y = rows
  function layout(c, v, withLabels) {
    var nq = v.values.length, nk = v.values[0].length;
    var labelled = withLabels && v.row_block === 1 && v.col_block === 1 && Math.max(nq, nk) <= LABELS;
    var m = labelled ? 110 : (withLabels ? 24 : 0);
    var cols = state.notes ? nq : nk, rows = state.notes ? nk : nq;
    return { m: m, labels: labelled, cols: cols, rows: rows,
             cw: (c.width - m - (withLabels ? 4 : 0)) / cols, ch: (c.height - m - (withLabels ? 4 : 0)) / rows };
  }
  // paint view v on canvas c; fill(a, b, w) gives a cell's colour (a query block, b key block)
  function paint(c, v, L, fill) {
    var g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    g.fillStyle = "#ffffff";
    g.fillRect(0, 0, c.width, c.height);
    for (var a = 0; a < v.values.length; a++) {
      for (var b = 0; b < v.values[a].length; b++) {
        var x = L.m + (state.notes ? a : b) * L.cw, y = L.m + (state.notes ? b : a) * L.ch;
        g.fillStyle = fill(a, b, v.values[a][b]);
        g.fillRect(x, y, Math.ceil(L.cw), Math.ceil(L.ch));
      }
    }
  }
  function blockHidden(session, v, a, b, words) {
    var qLast = Math.min(v.rows[1], v.rows[0] + (a + 1) * v.row_block) - 1;
    return hidden(session, qLast, v.cols[0] + b * v.col_block, words);
  }
  function visibleValues(session, v, words) {
    var out = [];
    v.values.forEach(function (row, a) {
      row.forEach(function (w, b) { if (!blockHidden(session, v, a, b, words)) out.push(w); });
    });
    return out;
  }
  function draw() {
    var v = state.view, L = layout(canvas, v, true), session = state.session;
    var sc = AK.scale($("scale").value, visibleValues(session, v, state.words));
    AK.legend($("legend"), sc);
    paint(canvas, v, L, function (a, b, w) {
      return blockHidden(session, v, a, b, state.words) ? "#d9d9d9" : AK.color(sc.t(w));
    });
    ctx.fillStyle = "#1b2733";
    ctx.font = "bold 12px system-ui, sans-serif";
    ctx.fillText(state.notes ? "queries →" : "keys →", L.m, 14);
    ctx.save();
    ctx.translate(12, L.m + 60);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(state.notes ? "keys ↓" : "queries ↓", -60, 0);
    ctx.restore();
    var names = labels();
    if (L.labels) {
      ctx.font = "11px system-ui, sans-serif";
      var rowStart = state.notes ? v.cols[0] : v.rows[0], colStart = state.notes ? v.rows[0] : v.cols[0];
      for (var r = 0; r < L.rows; r++) {
        ctx.textAlign = "right";
        ctx.fillText(names[rowStart + r].slice(0, 14), L.m - 4, L.m + (r + 0.5) * L.ch + 4);
      }
      for (var c = 0; c < L.cols; c++) {
        ctx.save();
        ctx.translate(L.m + (c + 0.5) * L.cw + 4, L.m - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "left";
        ctx.fillText(names[colStart + c].slice(0, 14), 0, 0);
        ctx.restore();
      }
      ctx.textAlign = "left";
    }
    if (state.cell && v.row_block === 1 && v.col_block === 1) {  // the cell whose K·Q is shown
      var a = state.cell[0] - v.rows[0], b = state.cell[1] - v.cols[0];
      if (a >= 0 && b >= 0 && a < v.values.length && b < v.values[0].length) {
        ctx.strokeStyle = "#e4572e";
        ctx.lineWidth = 2;
        ctx.strokeRect(L.m + (state.notes ? a : b) * L.cw, L.m + (state.notes ? b : a) * L.ch,
                       Math.max(3, L.cw), Math.max(3, L.ch));
      }
    }
  }

  // which query/key block of view v drawn on canvas c is under the mouse, or null
  function pickOn(c, v, e, withLabels) {
    if (!v) return null;
    var box = c.getBoundingClientRect(), L = layout(c, v, withLabels);
    var x = (e.clientX - box.left) * c.width / box.width - L.m;
    var y = (e.clientY - box.top) * c.height / box.height - L.m;
    var col = Math.floor(x / L.cw), row = Math.floor(y / L.ch);
    if (col < 0 || row < 0 || col >= L.cols || row >= L.rows) return null;
    var a = state.notes ? col : row, b = state.notes ? row : col;
    var q0 = v.rows[0] + a * v.row_block, k0 = v.cols[0] + b * v.col_block;
    return { a: a, b: b, q0: q0, q1: Math.min(v.rows[1], q0 + v.row_block),
             k0: k0, k1: Math.min(v.cols[1], k0 + v.col_block), w: v.values[a][b] };
  }

  function showTop(q) {
    if (state.hoverQuery === q) return;
    state.hoverQuery = q;
    request("/api/top?" + headQuery() + "&query=" + q + "&words=" + (state.words ? 1 : 0))
      .then(function (body) {
        if (state.hoverQuery !== q) return;
        var box = $("top");
        box.textContent = "";
        box.appendChild(el("h2", null, (state.words ? "query word " : "query ") + q + ": " + body.token));
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
  function showWhy(q, k) {
    request("/api/why?" + headQuery() + "&query=" + q + "&key=" + k + "&words=" + (state.words ? 1 : 0))
      .then(function (w) {
        state.cell = [q, k];
        AK.renderWhy($("kq"), w);
        draw();
      }).catch(function (e) { showError(e.message); });
  }

  canvas.addEventListener("mousemove", function (e) {
    var p = pickOn(canvas, state.view, e, true);
    if (!p) return;
    var names = labels();
    var tok = function (i) { return "“" + names[i] + "” (" + i + ")"; };
    if (p.q1 - p.q0 === 1 && p.k1 - p.k0 === 1) {
      $("hover").textContent = "query " + tok(p.q0) + " · key " + tok(p.k0) + " · weight " + p.w.toFixed(4);
    } else {
      $("hover").textContent = "queries " + p.q0 + "–" + (p.q1 - 1) + " × keys " + p.k0 + "–" +
        (p.k1 - 1) + " · " + state.view.reduce + " weight " + p.w.toFixed(4);
    }
    if (p.q1 - p.q0 === 1) showTop(p.q0);
  });
  canvas.addEventListener("click", function (e) {
    var p = pickOn(canvas, state.view, e, true), g = state.region;
    if (!p) return;
    if (p.q1 - p.q0 === 1 && p.k1 - p.k0 === 1 && !e.shiftKey) return showWhy(p.q0, p.k0);
    if (g[1] - g[0] <= 8 && g[3] - g[2] <= 8) return;
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

  // ---- every head at once --------------------------------------------------------------------
  function loadOverview() {
    var box = $("thumbs"), id = state.id, layers = state.session.layers.slice();
    box.textContent = "";
    $("overview").dataset.ready = "";
    var next = function () {
      if (!layers.length || state.id !== id) {
        if (state.id === id) $("overview").dataset.ready = "1";
        return;
      }
      var layer = layers.shift();
      request("/api/overview?id=" + id + "&layer=" + layer).then(function (o) {
        if (state.id !== id) return;
        $("overview-note").textContent = (o.block === 1 ? "every weight" : "max over blocks of " +
          o.block + "×" + o.block + " tokens") +
          (o.sampled_rows ? ", from " + o.sampled_rows + " evenly spaced query rows of " + o.n : "") +
          " · click one to open it";
        var row = el("div", "layer");
        row.appendChild(el("span", null, "layer " + layer));
        o.heads.forEach(function (head, i) {
          var a = el("a", "thumb");
          a.href = "#layer=" + layer + "&head=" + head;
          a.addEventListener("click", function (e) {  // works even when the hash is already this
            e.preventDefault();
            history.replaceState(null, "", a.getAttribute("href"));
            fromHash();
          });
          a.dataset.layer = layer; a.dataset.head = head;
          a.title = "layer " + layer + " head " + head;
          var c = el("canvas");
          c.width = 56; c.height = 56;
          var v = { values: o.values[i], rows: [0, o.n], cols: [0, o.n], row_block: o.block, col_block: o.block };
          var sc = AK.scale($("scale").value, visibleValues(state.session, v, false));
          paint(c, v, layout(c, v, false), function (qa, kb, w) {
            return blockHidden(state.session, v, qa, kb, false) ? "#d9d9d9" : AK.color(sc.t(w));
          });
          a.appendChild(c);
          row.appendChild(a);
        });
        box.appendChild(row);
        markThumb();
        next();
      }).catch(function (e) { showError(e.message); });
    };
    next();
  }
  function markThumb() {
    var all = document.querySelectorAll("#thumbs a.thumb");
    for (var i = 0; i < all.length; i++) {
      all[i].classList.toggle("on", +all[i].dataset.layer === state.layer && +all[i].dataset.head === state.head);
    }
  }
  function fromHash() {  // #layer=3&head=5, as the overview's links say
    var m = /layer=(\d+)&head=(\d+)/.exec(location.hash);
    if (!m || !state.session) return;
    var layer = parseInt(m[1], 10), head = parseInt(m[2], 10);
    if (state.session.layers.indexOf(layer) < 0 || state.session.heads.indexOf(head) < 0) return;
    if (layer === state.layer && head === state.head && state.view) return;
    state.layer = layer; state.head = head;
    $("layer").value = String(layer); $("head").value = String(head);
    headChanged();
  }
  window.addEventListener("hashchange", fromHash);

  // ---- comparing two captures ----------------------------------------------------------------
  function loadCompare() {
    var a = state.session, b = state.sessions[state.other];
    if (!a || !b) return;
    var words = false, hq = "&layer=" + state.layer + "&head=" + state.head;
    $("compare-status").textContent = "computing…";
    $("cmp-d").dataset.ready = "";
    Promise.all([
      request("/api/view?id=" + a.id + hq + "&size=150"),
      request("/api/view?id=" + b.id + hq + "&size=150"),
      request("/api/compare?a=" + a.id + "&b=" + b.id + hq + "&size=150"),
    ]).then(function (got) {
      var both = visibleValues(a, got[0], words).concat(visibleValues(b, got[1], words));
      var sc = AK.scale($("scale").value, both);
      [[got[0], a, "cmp-a", "cap-a", "A"], [got[1], b, "cmp-b", "cap-b", "B"]].forEach(function (x) {
        var c = $(x[2]), v = x[0], s = x[1];
        paint(c, v, layout(c, v, false), function (qa, kb, w) {
          return blockHidden(s, v, qa, kb, false) ? "#d9d9d9" : AK.color(sc.t(w));
        });
        $(x[3]).textContent = x[4] + ": " + s.kind + " " + s.name + " · " + s.n + " tokens";
      });
      var d = got[2], dv = d.view, top = 0;
      dv.values.forEach(function (r) { r.forEach(function (x) { top = Math.max(top, Math.abs(x)); }); });
      top = top || 1;
      var c = $("cmp-d");
      paint(c, dv, layout(c, dv, false), function (qa, kb, x) { return AK.diverging(x / top); });
      state.diff = d;
      c.dataset.aligned = String(d.aligned);
      c.dataset.top = String(top);
      $("cap-d").textContent = "A − B on the " + d.aligned + " tokens that line up (" +
        (dv.row_block === 1 ? "exact" : "mean over blocks of " + dv.row_block) +
        "): blue where A weighs more, red where B does";
      AK.legend($("cmp-legend"), { name: "difference", ref: top,
                                  one: "1.0 = a difference of " + AK.fmt(top) + " (the largest here)" }, true);
      $("compare-status").textContent = "layer " + state.layer + " · head " + state.head +
        " · hover the difference to read it";
      c.dataset.ready = "1";
    }).catch(function (e) { $("compare-status").textContent = e.message; });
  }
  $("cmp-d").addEventListener("mousemove", function (e) {
    var d = state.diff;
    if (!d) return;
    var p = pickOn(e.target, d.view, e, false);
    if (!p || p.q1 - p.q0 !== 1 || p.k1 - p.k0 !== 1) return;
    var pa = d.pairs[p.q0], pb = d.pairs[p.k0];
    $("compare-status").textContent = "query “" + d.tokens[p.q0] + "” (A " + pa[0] + ", B " + pa[1] +
      ") · key “" + d.tokens[p.k0] + "” (A " + pb[0] + ", B " + pb[1] + ") · A − B = " + p.w.toFixed(4);
    $("compare-status").dataset.value = String(p.w);
  });
  $("compare-run").addEventListener("click", function () {
    $("compare-status").textContent = "running the model…";
    post("/api/capture", { text: $("text2").value }).then(function (session) {
      remember(session);
      state.other = session.id;
      $("other").value = session.id;
      loadCompare();
    }).catch(function (e) { $("compare-status").textContent = e.message; });
  });
  $("other").addEventListener("change", function () {
    var id = $("other").value;
    request("/api/session?id=" + id).then(function (s) {
      state.sessions[s.id] = s;
      state.other = s.id;
      loadCompare();
    }).catch(function (e) { $("compare-status").textContent = e.message; });
  });

  // ---- controls --------------------------------------------------------------------------------
  function headChanged() {
    state.hoverQuery = null; state.cell = null; $("kq").hidden = true;
    load();
    if (state.other) loadCompare();
  }
  $("zoomout").addEventListener("click", function () {
    if (state.stack.length) { state.region = state.stack.pop(); load(); }
  });
  $("whole").addEventListener("click", function () { if (state.id) whole(); });
  $("flip").addEventListener("click", function () {
    state.notes = !state.notes;
    if (state.view) draw();
  });
  $("heads").addEventListener("click", function () {
    $("overview").hidden = !$("overview").hidden;
    if (!$("overview").hidden && state.id) loadOverview();
  });
  $("words").addEventListener("change", function () {
    state.words = $("words").checked;
    if (state.id) whole();
  });
  $("scale").addEventListener("change", function () {
    state.scaleChosen = true;
    if (state.view) draw();
    if (!$("overview").hidden && state.id) loadOverview();
    if (state.other) loadCompare();
  });
  $("run").addEventListener("click", capture);
  $("open").addEventListener("change", function () { openId($("open").value); });
  $("layer").addEventListener("change", function () { state.layer = parseInt($("layer").value, 10); headChanged(); });
  $("head").addEventListener("change", function () { state.head = parseInt($("head").value, 10); headChanged(); });
  $("reduce").addEventListener("change", load);

  var other = el("option", null, "—");
  other.value = "";
  $("other").appendChild(other);
  if (about.can_run) {
    $("model").textContent = about.model + " · " + about.n_layers + " layers × " + about.n_heads +
      " heads · up to " + about.max_tokens + " tokens";
  } else {
    $("model").textContent = "capture files · no model loaded";
    $("runrow").hidden = true;
    $("compare-run").hidden = true; $("text2").hidden = true;
    $("status").textContent = "Pick a capture file to explore.";
  }
  about.files.forEach(function (f) {
    remember({ id: f.id, kind: "file", name: f.name, n: f.n });
  });
  document.body.dataset.loaded = "1";
  if (about.files.length) {
    request("/api/session?id=" + about.files[0].id).then(function (s) {
      open(s);
      fromHash();
    }).catch(function (e) { showError(e.message); });
  }
})();
