/* hf-attn-inspect explorer, image mode: for the attention of a vision transformer (DATA.image present), the image
   the model saw with one query unit's attention row drawn over its patches. The query starts at [CLS]; hovering a
   patch makes that patch the query (its row is drawn and described); the [CLS] button goes back. The layer, heads,
   averaging and rollout controls of the page choose the matrix, as for the other views. Registers itself in
   window.hfAttnModes; explorer.js calls init(api) before it builds its controls and render(gen) for the view. */
"use strict";
(function () {
  const modes = (window.hfAttnModes = window.hfAttnModes || {});
  const STOPS = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]];
  const SHOWN = 448; /* the image is drawn this many CSS pixels wide, the patches scaled alike */
  let api = null, query = 0, scale = 1;

  function inferno(t) {
    const x = Math.max(0, Math.min(1, t)) * (STOPS.length - 1), k = Math.min(Math.floor(x), STOPS.length - 2), f = x - k;
    return STOPS[k].map((v, c) => Math.round(v * (1 - f) + STOPS[k + 1][c] * f));
  }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text) e.textContent = text;
    return e;
  }
  function grid() { return api.DATA.image.grid; }
  function lead() { return grid().lead_labels.length; }
  function label(u) {
    const g = grid();
    if (u < lead()) return g.lead_labels[u];
    const p = u - lead();
    return "p(" + Math.floor(p / g.cols) + "," + (p % g.cols) + ")";
  }
  function patchAt(ev) {
    const g = grid(), rect = ev.target.getBoundingClientRect();
    const x = (ev.clientX - rect.left) / scale, y = (ev.clientY - rect.top) / scale;
    const r = Math.floor(y / g.patch), c = Math.floor(x / g.patch);
    return r >= 0 && c >= 0 && r < g.rows && c < g.cols ? [r, c] : null;
  }

  modes.image = {
    init(a) {
      api = a;
      const D = a.DATA;
      if (!D.image) return false;
      const g = grid();
      scale = SHOWN / (g.cols * g.patch);
      const tab = el("button", { type: "button", "data-view": "image" }, "image");
      const tabs = document.getElementById("tabs");
      tabs.insertBefore(tab, tabs.firstChild);
      const sec = el("section", { id: "view-image", class: "view hidden" });
      const wrap = el("div", { class: "image-wrap", id: "im-wrap" });
      const img = el("img", { id: "im-img", alt: "the image as the model saw it", width: String(SHOWN),
                              height: String(Math.round(g.rows * g.patch * scale)) });
      img.src = "data:image/png;base64," + D.image.png;
      const canvas = el("canvas", { id: "im-canvas", width: String(SHOWN), height: String(Math.round(g.rows * g.patch * scale)) });
      wrap.appendChild(img);
      wrap.appendChild(canvas);
      const side = el("div", { class: "image-side" });
      const back = el("button", { type: "button", id: "im-cls" }, "query: " + g.lead_labels[0]);
      back.addEventListener("click", () => { query = 0; a.render(); });
      side.appendChild(back);
      side.appendChild(el("div", { id: "im-info", class: "image-info" }));
      sec.appendChild(wrap);
      sec.appendChild(side);
      document.querySelector("main").appendChild(sec);
      canvas.addEventListener("mousemove", (ev) => {
        const p = patchAt(ev);
        if (!p) return;
        const u = lead() + p[0] * g.cols + p[1];
        if (u !== query) { query = u; a.render(); }
      });
      a.state.view = "image";
      return true;
    },
    async render(gen) {
      const D = api.DATA, g = grid(), S = D.stacks[api.state.stack];
      const sel = await api.selection(true);
      if (gen !== undefined && gen !== api.generation()) return;
      const m = sel[0].m, nk = S.nk;
      const row = m.subarray(query * nk, (query + 1) * nk);
      let lo = Infinity, hi = -Infinity, best = lead();
      for (let j = lead(); j < nk; j++) {
        if (row[j] < lo) lo = row[j];
        if (row[j] > hi) { hi = row[j]; best = j; }
      }
      const canvas = document.getElementById("im-canvas"), ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      const cell = g.patch * scale, span = hi - lo;
      for (let p = 0; p < g.rows * g.cols; p++) {
        const t = span > 0 ? (row[lead() + p] - lo) / span : 0;
        const [r, gg, b] = inferno(t);
        ctx.fillStyle = "rgba(" + r + "," + gg + "," + b + ",0.6)";
        ctx.fillRect((p % g.cols) * cell, Math.floor(p / g.cols) * cell, cell, cell);
      }
      if (query >= lead()) {
        const p = query - lead();
        ctx.strokeStyle = "#22d3ee"; ctx.lineWidth = 2;
        ctx.strokeRect((p % g.cols) * cell + 1, Math.floor(p / g.cols) * cell + 1, cell - 2, cell - 2);
      }
      let rest = [];
      for (let j = 0; j < lead(); j++) rest.push(g.lead_labels[j] + " " + row[j].toFixed(3));
      const text = "query " + label(query) + " (" + api.layerName() + ", " + sel[0].name + "): strongest patch " +
        label(best) + " " + hi.toFixed(3) + "; on non-patch units: " + rest.join(", ");
      const info = document.getElementById("im-info");
      info.textContent = text;
      info.dataset.query = String(query);
      info.dataset.best = String(best);
      api.setInfo(text, { row: String(query), col: String(best), value: String(hi) });
    },
  };
})();
