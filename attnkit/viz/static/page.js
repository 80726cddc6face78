// attnkit page: draws one head's pattern from the JSON in #attnkit-data; click a cell for its
// K·Q, computed here from the head's queries and keys as Captured.why computes it.
// Tokens are always inserted with textContent, never as HTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("attnkit-data").textContent);
  var el = AK.el;
  var $ = function (id) { return document.getElementById(id); };
  var words = data.words || { tokens: data.tokens, spans: data.tokens.map(function (t, i) { return [i, i + 1]; }), on: false };
  var state = { layer: data.layer, head: data.head, orientation: data.orientation, query: null,
                words: !!words.on, cell: null };
  var TABLE_UP_TO = 96;  // longer inputs are drawn on a canvas, one pixel block per cell
  var PIECES = data.tokens.length;
  var cache = {};

  // ---- what is drawn: pieces, or words (a query word's row is the mean of its pieces' rows,
  // a key word's weight the sum of its pieces' weights) -------------------------------------
  function pieceWeights() {  // [query][key] in 0..1, or null when this head is not in the page
    var rows = data.patterns[state.layer + "," + state.head];
    return rows ? rows.map(function (r) { return r.map(function (w) { return w / data.scale; }); }) : null;
  }
  function weights() {
    var key = state.layer + "," + state.head + "," + state.words;
    if (key in cache) return cache[key];
    var P = pieceWeights();
    if (P && state.words) {
      var S = words.spans;
      P = S.map(function (qs) {
        return S.map(function (ks) {
          var total = 0;
          for (var i = qs[0]; i < qs[1]; i++) for (var j = ks[0]; j < ks[1]; j++) total += P[i][j];
          return total / (qs[1] - qs[0]);
        });
      });
    }
    cache[key] = P;
    return P;
  }
  function tokens() { return state.words ? words.tokens : data.tokens; }
  function n() { return tokens().length; }
  function big() { return n() > TABLE_UP_TO; }
  function hidden(q, k) {
    if (!data.causal) return false;
    if (state.words) { q = words.spans[q][1] - 1; k = words.spans[k][0]; }
    return k > q;
  }
  function currentScale(P) {
    var values = [];
    for (var q = 0; q < P.length; q++) for (var k = 0; k < P.length; k++) if (!hidden(q, k)) values.push(P[q][k]);
    var sc = AK.scale($("scale").value, values);
    AK.legend($("legend"), sc);
    return sc;
  }

  function fillSelect(id, count, value) {
    var s = $(id);
    for (var i = 0; i < count; i++) {
      var o = el("option", null, String(i));
      o.value = String(i);
      s.appendChild(o);
    }
    s.value = String(value);
    s.addEventListener("change", function () {
      state[id] = parseInt(s.value, 10);
      state.cell = null;
      $("kq").hidden = true;
      draw();
    });
  }

  function draw() {
    var grid = $("grid"), note = $("note");
    grid.textContent = "";
    note.textContent = "";
    grid.dataset.layer = state.layer;
    grid.dataset.head = state.head;
    grid.dataset.words = state.words ? "1" : "0";
    $("which").textContent = data.model + " · layer " + state.layer + " · head " + state.head +
      (state.words ? " · " + n() + " words" : "");
    var P = weights();
    var canvas = $("canvas");
    canvas.style.display = "none";
    if (!P) {
      note.textContent = "This page holds only some heads (the input is long); run attnkit explain " +
        "with --layer " + state.layer + " --head " + state.head + " to see this one.";
      return;
    }
    var sc = currentScale(P);
    if (big()) return drawCanvas(P, sc);
    var notes = state.orientation === "notes";
    var rowName = notes ? "keys" : "queries", colName = notes ? "queries" : "keys";
    $("orient").textContent = notes ?
      "keys down, queries across (each column sums to 1)" : "queries down, keys across (each row sums to 1)";
    var names = tokens(), count = n();
    var head = el("tr");
    head.appendChild(el("th", "axis", rowName + " ↓ / " + colName + " →"));
    for (var c = 0; c < count; c++) {
      var th = el("th", "col");
      th.appendChild(el("div", null, names[c]));
      th.dataset.index = c;
      if (!notes) th.dataset.key = c; else th.dataset.q = c;
      head.appendChild(th);
    }
    grid.appendChild(head);
    for (var r = 0; r < count; r++) {
      var tr = el("tr");
      var rh = el("th", "row", names[r]);
      if (notes) rh.dataset.key = r; else rh.dataset.q = r;
      tr.appendChild(rh);
      for (c = 0; c < count; c++) {
        var q = notes ? c : r, k = notes ? r : c;
        var td = el("td", "cell");
        td.dataset.q = q;
        td.dataset.k = k;
        if (hidden(q, k)) {
          td.className += " hidden";
          td.title = "hidden: a causal model's query cannot see a later key";
        } else {
          var w = P[q][k], t = sc.t(w);
          td.style.background = AK.color(t);
          td.textContent = w >= 0.005 ? w.toFixed(2).replace(/^0/, "") : "";
          if (t > 0.45) td.className += " dark";
        }
        if (state.cell && state.cell[0] === q && state.cell[1] === k) td.className += " picked";
        tr.appendChild(td);
      }
      grid.appendChild(tr);
    }
    if (state.query !== null && state.query < count) focus(state.query);
  }

  // long inputs: every cell a few pixels of a canvas; rows = keys, columns = queries (notes)
  var image = null;
  function drawCanvas(P, sc) {
    var canvas = $("canvas"), count = n();
    var notes = state.orientation === "notes";
    canvas.style.display = "block";
    canvas.dataset.layer = state.layer;
    canvas.dataset.head = state.head;
    $("orient").textContent = (notes ?
      "keys down, queries across (each column sums to 1)" :
      "queries down, keys across (each row sums to 1)") + " · " + count + (state.words ? " words" : " tokens") +
      ": hover to read them, click for a cell's K·Q";
    var cells = new ImageData(count, count);
    for (var q = 0; q < count; q++) {
      for (var k = 0; k < count; k++) {
        var r = notes ? k : q, c = notes ? q : k, at = 4 * (r * count + c);
        var rgb = hidden(q, k) ? [217, 217, 217] : AK.rgb(sc.t(P[q][k]));
        cells.data[at] = rgb[0]; cells.data[at + 1] = rgb[1]; cells.data[at + 2] = rgb[2];
        cells.data[at + 3] = 255;
      }
    }
    var scratch = document.createElement("canvas");
    scratch.width = count; scratch.height = count;
    scratch.getContext("2d").putImageData(cells, 0, 0);
    image = scratch;
    paintCanvas();
    if (state.query !== null && state.query < count) focus(state.query);
  }
  function paintCanvas() {
    var canvas = $("canvas"), ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
    var s = canvas.width / n(), notes = state.orientation === "notes";
    ctx.strokeStyle = "#e4572e";
    ctx.lineWidth = 2;
    if (state.query !== null) {
      if (notes) ctx.strokeRect(state.query * s, 0, Math.max(2, s), canvas.height);
      else ctx.strokeRect(0, state.query * s, canvas.width, Math.max(2, s));
    }
    if (state.cell) {
      var x = (notes ? state.cell[0] : state.cell[1]) * s, y = (notes ? state.cell[1] : state.cell[0]) * s;
      ctx.strokeRect(x - 2, y - 2, Math.max(4, s) + 4, Math.max(4, s) + 4);
    }
  }

  function focus(q) {
    state.query = q;
    var P = weights();
    if (!P) return;
    if (big()) paintCanvas();
    var cells = document.querySelectorAll("#grid td.cell, #grid th");
    for (var i = 0; i < cells.length; i++) {
      var on = cells[i].dataset.q !== undefined && parseInt(cells[i].dataset.q, 10) === q;
      cells[i].classList.toggle("on", on);
    }
    var panel = $("weights"), names = tokens();
    panel.textContent = "";
    panel.appendChild(el("h2", null, (big() ? "query " + q : "query") + ": " + names[q]));
    panel.appendChild(el("div", "sub", big() ? "its 20 best keys" : "its keys, best answer first"));
    var order = P[q].map(function (w, k) { return [k, w]; })
      .filter(function (x) { return !hidden(q, x[0]); })
      .sort(function (a, b) { return b[1] - a[1]; })
      .slice(0, big() ? 20 : n());
    var ol = el("ol");
    order.forEach(function (x) {
      var li = el("li", "weight");
      li.dataset.k = x[0];
      li.appendChild(el("span", "tok", names[x[0]]));
      li.appendChild(el("span", "w", " " + x[1].toFixed(3)));
      var bar = el("span", "bar");
      bar.style.width = Math.round(x[1] * 120) + "px";
      li.appendChild(bar);
      ol.appendChild(li);
    });
    panel.appendChild(ol);
  }

  // ---- K·Q of one cell, from the head's q, k and lse (as Captured.why computes it) --------
  function floats(text) {
    var bytes = atob(text), view = new DataView(new ArrayBuffer(bytes.length));
    for (var i = 0; i < bytes.length; i++) view.setUint8(i, bytes.charCodeAt(i));
    var out = new Float64Array(bytes.length / 4);
    for (i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
    return out;
  }
  var vectors = {};
  function headVectors(layer, head) {
    var key = layer + "," + head, kq = data.kq;
    if (!kq || !kq.heads[key]) return null;
    if (!vectors[key]) {
      var h = kq.heads[key];
      vectors[key] = { q: floats(h.q), k: floats(h.k), lse: floats(h.lse) };
    }
    return vectors[key];
  }
  function why(layer, head, query, key, note) {
    var kq = data.kq, v = headVectors(layer, head), opt = kq.layers[String(layer)];
    var d = kq.d, m = kq.tokens.length, TOP = 8;
    var row = function (t, i) { return Array.prototype.slice.call(t.subarray(i * d, (i + 1) * d)); };
    var q = row(v.q, query), lse = v.lse[query];
    var win = opt.window || [null, null], left = win[0], right = win[1];
    if (opt.causal) right = right === null ? 0 : Math.min(right, 0);
    var diag = query + opt.offset;
    var scores = [], seen = [], nSeen = 0;
    for (var j = 0; j < m; j++) {
      var kj = row(v.k, j), dot = 0;
      for (var i = 0; i < d; i++) dot += q[i] * kj[i];
      var ok = (right === null || j <= diag + right) && (left === null || j >= diag - left);
      seen.push(ok);
      if (ok) nSeen++;
      scores.push({ key: j, dot: dot, score: ok ? dot * opt.scale : -Infinity });
    }
    var weightOf = function (s) { return s.score === -Infinity || lse === -Infinity ? 0 : Math.exp(s.score - lse); };
    var me = scores[key], k = row(v.k, key);
    var order = scores.filter(function (s) { return s.score > -Infinity; })
      .sort(function (a, b) { return b.score - a.score || a.key - b.key; }).slice(0, TOP);
    var rank = 1;
    scores.forEach(function (s) { if (s.score > me.score) rank++; });
    var w = {
      layer: layer, head: head, query: query, key: key,
      query_token: kq.tokens[query], key_token: kq.tokens[key],
      q: q, k: k, products: q.map(function (x, i) { return x * k[i]; }), dot: me.dot,
      scale: opt.scale, bias: null, masked: !seen[key],
      mask_reason: seen[key] ? null : (opt.causal && key > diag ? "causal: a query cannot see later keys" : "window"),
      score: seen[key] ? me.score : null, lse: lse, weight: weightOf(me),
      rank: seen[key] ? rank : null, n_visible: nSeen,
      competitors: order.map(function (s) {
        return { key: s.key, token: kq.tokens[s.key], score: s.score, weight: weightOf(s) };
      }),
      bands: null, unrotated: null, rotary: null, note: note || null,
    };
    var rot = kq.rotary;
    if (rot && (rot.layers === null || rot.layers.indexOf(layer) >= 0)) {
      w.bands = rot.pairs.map(function (p, i) {
        return { pair: i, dims: p, frequency: rot.frequencies ? rot.frequencies[i] : null,
                 product: q[p[0]] * k[p[0]] + q[p[1]] * k[p[1]] };
      });
      w.unrotated = 0;
      for (var r = rot.rotary_dim; r < d; r++) w.unrotated += q[r] * k[r];
      w.rotary = rot.describe;
    }
    return w;
  }
  function showWhy(q, k) {  // q, k: positions as drawn (tokens, or words)
    var panel = $("kq");
    state.cell = [q, k];
    if (!headVectors(state.layer, state.head)) {
      panel.textContent = "";
      panel.appendChild(el("div", "note", "This page does not hold the queries and keys of this head; " +
        "open the capture in the explorer (attnkit serve) for its K·Q."));
      panel.hidden = false;
      return;
    }
    var note = null, qi = q, ki = k;
    if (state.words) {  // the word pair's pieces with the largest weight
      var P = pieceWeights(), qs = words.spans[q], ks = words.spans[k], best = -1;
      for (var i = qs[0]; i < qs[1]; i++) for (var j = ks[0]; j < ks[1]; j++) {
        if (P[i][j] > best) { best = P[i][j]; qi = i; ki = j; }
      }
      note = "words “" + words.tokens[q] + "” → “" + words.tokens[k] + "”: the pieces with the largest weight, “" +
        data.tokens[qi] + "” → “" + data.tokens[ki] + "”";
    }
    var positions = data.kq.positions;
    if (positions) {
      qi = positions[qi]; ki = positions[ki];
      note = (note ? note + ". " : "") + "Weights are the model's, over all its tokens.";
    }
    AK.renderWhy(panel, why(state.layer, state.head, qi, ki, note));
    if (big()) paintCanvas(); else draw();
  }

  $("grid").addEventListener("mouseover", function (e) {
    var t = e.target.closest ? e.target.closest("[data-q]") : null;
    if (t) focus(parseInt(t.dataset.q, 10));
  });
  $("grid").addEventListener("click", function (e) {
    var t = e.target.closest ? e.target.closest("td.cell") : null;
    if (t && !t.classList.contains("hidden")) showWhy(parseInt(t.dataset.q, 10), parseInt(t.dataset.k, 10));
  });
  function canvasCell(e) {
    var canvas = e.target, box = canvas.getBoundingClientRect(), count = n();
    var x = Math.max(0, Math.min(count - 1, Math.floor((e.clientX - box.left) / box.width * count)));
    var y = Math.max(0, Math.min(count - 1, Math.floor((e.clientY - box.top) / box.height * count)));
    return state.orientation === "notes" ? [x, y] : [y, x];  // [query, key]
  }
  $("canvas").addEventListener("mousemove", function (e) {
    var q = canvasCell(e)[0];
    if (q !== state.query) focus(q);
  });
  $("canvas").addEventListener("click", function (e) {
    var cell = canvasCell(e);
    if (!hidden(cell[0], cell[1])) showWhy(cell[0], cell[1]);
  });
  $("flip").addEventListener("click", function () {
    state.orientation = state.orientation === "notes" ? "query-key" : "notes";
    draw();
  });
  $("scale").addEventListener("change", draw);
  if (words.tokens.length === PIECES) {
    $("words-box").hidden = true;  // every token is a word already
    state.words = false;
  }
  $("words").checked = state.words;
  $("words").addEventListener("change", function () {
    state.words = $("words").checked;
    state.query = null; state.cell = null;
    $("kq").hidden = true;
    draw();
  });
  $("scale").value = data.colour || AK.defaultScale(PIECES);
  fillSelect("layer", data.n_layers, data.layer);
  fillSelect("head", data.n_heads, data.head);
  $("title").textContent = data.title;
  draw();
  document.body.dataset.ready = "1";
})();
