// attnkit page: draws one head's pattern from the JSON in #attnkit-data.
// Tokens are always inserted with textContent, never as HTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("attnkit-data").textContent);
  var state = { layer: data.layer, head: data.head, orientation: data.orientation, query: null };
  var n = data.tokens.length;
  var TABLE_UP_TO = 96;  // longer inputs are drawn on a canvas, one pixel block per cell
  var big = n > TABLE_UP_TO;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function weights() {  // [query][key] in 0..1, or null when this head is not in the page
    var rows = data.patterns[state.layer + "," + state.head];
    return rows ? rows.map(function (r) { return r.map(function (w) { return w / data.scale; }); }) : null;
  }
  function hidden(q, k) { return data.causal && k > q; }
  function color(w) {
    var t = Math.sqrt(w);  // makes small weights visible
    var r = Math.round(247 - t * (247 - 8)), g = Math.round(251 - t * (251 - 48)), b = Math.round(255 - t * (255 - 107));
    return "rgb(" + r + "," + g + "," + b + ")";
  }

  function fillSelect(id, count, value) {
    var s = document.getElementById(id);
    for (var i = 0; i < count; i++) {
      var o = el("option", null, String(i));
      o.value = String(i);
      s.appendChild(o);
    }
    s.value = String(value);
    s.addEventListener("change", function () {
      state[id] = parseInt(s.value, 10);
      draw();
    });
  }

  function draw() {
    var grid = document.getElementById("grid");
    var note = document.getElementById("note");
    grid.textContent = "";
    note.textContent = "";
    grid.dataset.layer = state.layer;
    grid.dataset.head = state.head;
    document.getElementById("which").textContent =
      data.model + " · layer " + state.layer + " · head " + state.head;
    var P = weights();
    var canvas = document.getElementById("canvas");
    canvas.style.display = "none";
    if (!P) {
      note.textContent = "This page holds only some heads (the input is long); run attnkit explain " +
        "with --layer " + state.layer + " --head " + state.head + " to see this one.";
      return;
    }
    if (big) return drawCanvas(P);
    var notes = state.orientation === "notes";
    var rowName = notes ? "keys" : "queries", colName = notes ? "queries" : "keys";
    document.getElementById("orient").textContent = notes ?
      "keys down, queries across (each column sums to 1)" : "queries down, keys across (each row sums to 1)";
    var head = el("tr");
    head.appendChild(el("th", "axis", rowName + " ↓ / " + colName + " →"));
    for (var c = 0; c < n; c++) {
      var th = el("th", "col");
      var d = el("div", null, data.tokens[c]);
      th.appendChild(d);
      th.dataset.index = c;
      if (!notes) th.dataset.key = c; else th.dataset.q = c;
      head.appendChild(th);
    }
    grid.appendChild(head);
    for (var r = 0; r < n; r++) {
      var tr = el("tr");
      var rh = el("th", "row", data.tokens[r]);
      if (notes) rh.dataset.key = r; else rh.dataset.q = r;
      tr.appendChild(rh);
      for (c = 0; c < n; c++) {
        var q = notes ? c : r, k = notes ? r : c;
        var td = el("td", "cell");
        td.dataset.q = q;
        td.dataset.k = k;
        if (hidden(q, k)) {
          td.className += " hidden";
          td.title = "hidden: a causal model's query cannot see a later key";
        } else {
          var w = P[q][k];
          td.style.background = color(w);
          td.textContent = w >= 0.005 ? w.toFixed(2).replace(/^0/, "") : "";
          if (w > 0.45) td.className += " dark";
        }
        tr.appendChild(td);
      }
      grid.appendChild(tr);
    }
    if (state.query !== null) focus(state.query);
  }

  // long inputs: every cell a few pixels of a canvas; rows = keys, columns = queries (notes)
  var image = null;
  function drawCanvas(P) {
    var canvas = document.getElementById("canvas"), ctx = canvas.getContext("2d");
    var notes = state.orientation === "notes";
    canvas.style.display = "block";
    canvas.dataset.layer = state.layer;
    canvas.dataset.head = state.head;
    document.getElementById("orient").textContent = (notes ?
      "keys down, queries across (each column sums to 1)" :
      "queries down, keys across (each row sums to 1)") + " · " + n + " tokens: hover to read them";
    var cells = ctx.createImageData(n, n);
    for (var q = 0; q < n; q++) {
      for (var k = 0; k < n; k++) {
        var r = notes ? k : q, c = notes ? q : k, at = 4 * (r * n + c);
        var rgb = hidden(q, k) ? [217, 217, 217] : color(P[q][k]).slice(4, -1).split(",").map(Number);
        cells.data[at] = rgb[0]; cells.data[at + 1] = rgb[1]; cells.data[at + 2] = rgb[2];
        cells.data[at + 3] = 255;
      }
    }
    var scratch = document.createElement("canvas");
    scratch.width = n; scratch.height = n;
    scratch.getContext("2d").putImageData(cells, 0, 0);
    image = scratch;
    paintCanvas();
    if (state.query !== null) focus(state.query);
  }
  function paintCanvas() {
    var canvas = document.getElementById("canvas"), ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
    if (state.query !== null) {
      var s = canvas.width / n, notes = state.orientation === "notes";
      ctx.strokeStyle = "#e4572e";
      ctx.lineWidth = 2;
      if (notes) ctx.strokeRect(state.query * s, 0, Math.max(2, s), canvas.height);
      else ctx.strokeRect(0, state.query * s, canvas.width, Math.max(2, s));
    }
  }

  function focus(q) {
    state.query = q;
    var P = weights();
    if (!P) return;
    if (big) paintCanvas();
    var cells = document.querySelectorAll("#grid td.cell, #grid th");
    for (var i = 0; i < cells.length; i++) {
      var on = cells[i].dataset.q !== undefined && parseInt(cells[i].dataset.q, 10) === q;
      cells[i].classList.toggle("on", on);
    }
    var panel = document.getElementById("weights");
    panel.textContent = "";
    panel.appendChild(el("h2", null, (big ? "query " + q : "query") + ": " + data.tokens[q]));
    panel.appendChild(el("div", "sub", big ? "its 20 best keys" : "its keys, best answer first"));
    var order = P[q].map(function (w, k) { return [k, w]; })
      .filter(function (x) { return !hidden(q, x[0]); })
      .sort(function (a, b) { return b[1] - a[1]; })
      .slice(0, big ? 20 : n);
    var ol = el("ol");
    order.forEach(function (x) {
      var li = el("li", "weight");
      li.dataset.k = x[0];
      li.appendChild(el("span", "tok", data.tokens[x[0]]));
      li.appendChild(el("span", "w", " " + x[1].toFixed(3)));
      var bar = el("span", "bar");
      bar.style.width = Math.round(x[1] * 120) + "px";
      li.appendChild(bar);
      ol.appendChild(li);
    });
    panel.appendChild(ol);
  }

  document.getElementById("grid").addEventListener("mouseover", function (e) {
    var t = e.target.closest ? e.target.closest("[data-q]") : null;
    if (t) focus(parseInt(t.dataset.q, 10));
  });
  document.getElementById("canvas").addEventListener("mousemove", function (e) {
    var canvas = e.target, box = canvas.getBoundingClientRect();
    var notes = state.orientation === "notes";
    var at = notes ? (e.clientX - box.left) / box.width : (e.clientY - box.top) / box.height;
    var q = Math.max(0, Math.min(n - 1, Math.floor(at * n)));
    if (q !== state.query) focus(q);
  });
  document.getElementById("flip").addEventListener("click", function () {
    state.orientation = state.orientation === "notes" ? "query-key" : "notes";
    draw();
  });
  fillSelect("layer", data.n_layers, data.layer);
  fillSelect("head", data.n_heads, data.head);
  document.getElementById("title").textContent = data.title;
  draw();
  document.body.dataset.ready = "1";
})();
