/* hf-attn-inspect explorer: plain JavaScript, no library, no network. Tokens are only ever inserted
   with textContent (never as markup). Weights arrive quantised per row (uint8 levels times a float32
   step per row), gzip-compressed and base64-encoded per head; each head is inflated on demand with
   the browser's DecompressionStream and cached. */
"use strict";
(function () {
  performance.mark("hai-start");
  const DATA = JSON.parse(document.getElementById("hai-data").textContent);
  performance.mark("hai-parsed");
  const $ = (id) => document.getElementById(id);
  const stackNames = Object.keys(DATA.stacks);
  const MODES = window.hfAttnModes || {};  /* extra views of explorer_<mode>.js files, keyed by view name */
  const state = {
    stack: stackNames[0], layer: 0, heads: [0], focus: 0, average: false, rollout: false,
    hideSpecial: false, level: "token", pair: "all", dark: false,
    /* long inputs open on the matrix (a 512-token head view is 9000 px tall) */
    view: DATA.generation ? "generation" : DATA.stacks[stackNames[0]].nq > 150 || DATA.stacks[stackNames[0]].pooled ? "matrix" : "head",
    colour: DATA.stacks[stackNames[0]].nq > 64 ? "sqrt" : "linear",
    metric: DATA.metric_names.length ? DATA.metric_names[0] : null,
  };
  let generation = 0;

  // ------------------------------------------------------------------ decoding
  function b64bytes(s) {
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  async function gunzip(s) {
    const stream = new Blob([b64bytes(s)]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  const cache = new Map();
  function cached(key, make) {
    if (!cache.has(key)) cache.set(key, make());
    return cache.get(key);
  }
  function levels(stack, kind, l, h) {
    const S = DATA.stacks[stack];
    const src = kind === "rollout" ? S.rollout.levels[l] : S.levels[l][h];
    return cached(stack + "/" + kind + "/" + l + "/" + h, () => gunzip(src));
  }
  function steps(stack, kind) {
    const S = DATA.stacks[stack];
    const src = kind === "rollout" ? S.rollout.steps : S.steps;
    return cached(stack + "/" + kind + "/steps", async () => {
      const b = await gunzip(src);
      return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    });
  }
  /* Float32Array [nq * nk] of one head (kind "head") or of one layer's rollout (kind "rollout"). */
  async function matrix(stack, kind, l, h) {
    const S = DATA.stacks[stack];
    const [q, st] = await Promise.all([levels(stack, kind, l, h), steps(stack, kind)]);
    const g = layerGeom(S, l);
    const nq = g.nq, nk = g.nk;
    const base = kind === "rollout" ? l * nq : g.base + h * nq;
    const out = new Float32Array(nq * nk);
    for (let i = 0; i < nq; i++) {
      const s = st[base + i], o = i * nk;
      for (let j = 0; j < nk; j++) out[o + j] = q[o + j] * s;
    }
    return out;
  }

  // ----------------------------------------------------------- pooled layers
  /* Long inputs (view above the memory budget): some layers hold block means of at most 256 x 256 blocks
     per head instead of token-level weights (S.pooled, see views/explorer.py _add_pooled). */
  function layerGeom(S, l) {
    if (!S.pooled) return { nq: S.nq, nk: S.nk, base: l * S.head_ids.length * S.nq, pooled: false };
    const P = S.pooled;
    return { nq: P.nq[l], nk: P.nk[l], base: P.step_base[l], pooled: P.layers[l] };
  }
  function isPooled(stack, l) {
    const S = DATA.stacks[stack];
    return !!(S.pooled && S.pooled.layers[l]);
  }
  function blockAxis(edges) {
    const labels = [];
    for (let i = 0; i + 1 < edges.length; i++) {
      labels.push(edges[i + 1] - edges[i] > 1 ? edges[i] + "\u2013" + (edges[i + 1] - 1) : String(edges[i]));
    }
    return { idx: labels.map((_, i) => i), labels, special: labels.map(() => false) };
  }
  function projectPooled(m) {
    const S = DATA.stacks[state.stack], g = layerGeom(S, state.layer);
    let vmax = 0;
    for (let i = 0; i < m.length; i++) if (m[i] > vmax) vmax = m[i];
    return { nr: g.nq, nc: g.nk, data: m, vmax, rows: blockAxis(S.pooled.q_edges), cols: blockAxis(S.pooled.k_edges), pooled: true };
  }
  function pooledLabel(stack, l) {
    return isPooled(stack, l) ? " (pooled)" : "";
  }
  function syncPooledControls() {
    const S = DATA.stacks[state.stack];
    const note = $("pooled-note");
    note.textContent = S.pooled ? S.pooled.note : "";
    note.classList.toggle("hidden", !S.pooled);
    const off = isPooled(state.stack, state.layer);
    const why = off ? "needs token-level weights; this layer is pooled" : "";
    for (const id of ["level", "hide-special", "pair"]) {
      const el = $(id);
      el.disabled = off || (id === "pair" && !hasPair());
      el.title = why;
    }
    if (!S.rollout) $("rollout").title = S.pooled ? "needs token-level weights of consecutive layers; pooled layers have none" : "";
  }
  function renderPooledHead() {
    $("hv-left").textContent = ""; $("hv-right").textContent = "";
    const canvas = $("hv-canvas");
    canvas.height = 20; canvas.style.height = "20px";
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    canvas.dataset.lines = "0";
    const msg = document.createElement("div");
    msg.className = "pooled-msg";
    msg.textContent = layerName() + " is pooled: the head view draws a line per token pair and needs token-level " +
      "weights. Open the matrix or model view for this layer's blocks" +
      (DATA.stacks[state.stack].pooled.layers.some((p) => !p) ? ", or pick a layer without \u201c(pooled)\u201d." : ".");
    $("hv-left").appendChild(msg);
    canvas.dataset.drawn = layerName() + " pooled";
  }
  function pooledHoverText(P, r, c, v) {
    const S = DATA.stacks[state.stack];
    const qe = S.pooled.q_edges, ke = S.pooled.k_edges;
    return "query tokens " + qe[r] + "\u2013" + (qe[r + 1] - 1) + " \u2192 key tokens " + ke[c] + "\u2013" + (ke[c + 1] - 1) +
      ": mean share " + v.toPrecision(4) + " (pooled block)";
  }

  // -------------------------------------------------------------- projection
  function axis(stack, side) {
    return DATA.axes[DATA.stacks[stack][side]];
  }
  /* Word level: sum over the pieces of a key word, mean over the pieces of a query word. */
  function toWords(m, qa, ka) {
    const nq = qa.unit_labels.length, nk = ka.unit_labels.length;
    const tq = qa.units.length, tk = ka.units.length;
    const out = new Float32Array(nq * nk);
    for (let i = 0; i < tq; i++) {
      const o = qa.units[i] * nk, src = i * tk;
      for (let j = 0; j < tk; j++) out[o + ka.units[j]] += m[src + j];
    }
    const count = new Float32Array(nq);
    for (let i = 0; i < tq; i++) count[qa.units[i]] += 1;
    for (let u = 0; u < nq; u++) for (let j = 0; j < nk; j++) out[u * nk + j] /= count[u];
    return out;
  }
  function axisView(a, word, wantSeg) {
    const labels = word ? a.unit_labels : a.labels;
    const special = word ? a.unit_special : a.special;
    const seg = word ? a.unit_segment : a.segment;
    const idx = [];
    for (let i = 0; i < labels.length; i++) {
      if (state.hideSpecial && special[i]) continue;
      if (wantSeg !== null && seg[i] !== wantSeg) continue;
      idx.push(i);
    }
    return { idx, labels, special };
  }
  function hasPair() {
    return state.stack === "self" && DATA.has_pair;
  }
  /* The visible sub-matrix of a full [nq, nk] token matrix, after word merge and the filters. */
  function projectLayer(m, l) {
    const keep = state.layer;
    state.layer = l;
    try { return project(m); } finally { state.layer = keep; }
  }
  function project(m) {
    if (isPooled(state.stack, state.layer)) return projectPooled(m);
    const S = DATA.stacks[state.stack];
    const qa = axis(state.stack, "q_axis"), ka = axis(state.stack, "k_axis");
    const word = state.level === "word";
    let full = m, fk = S.nk;
    if (word) { full = toWords(m, qa, ka); fk = ka.unit_labels.length; }
    let qs = null, ks = null;
    if (hasPair() && state.pair !== "all") {
      qs = state.pair[0] === "A" ? 0 : 1;
      ks = state.pair[1] === "A" ? 0 : 1;
    }
    const rows = axisView(qa, word, qs), cols = axisView(ka, word, ks);
    const nr = rows.idx.length, nc = cols.idx.length;
    const data = new Float32Array(nr * nc);
    let vmax = 0;
    for (let r = 0; r < nr; r++) {
      const o = rows.idx[r] * fk;
      for (let c = 0; c < nc; c++) {
        const v = full[o + cols.idx[c]];
        data[r * nc + c] = v;
        if (v > vmax) vmax = v;
      }
    }
    return { nr, nc, data, vmax, rows, cols };
  }

  // ---------------------------------------------------------------- colours
  function lut(dark) {
    const stops = dark
      ? [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]]
      : [[255, 255, 255], [222, 235, 247], [198, 219, 239], [158, 202, 225], [107, 174, 214], [66, 146, 198], [33, 113, 181], [8, 48, 107]];
    const out = new Uint8Array(256 * 3);
    for (let i = 0; i < 256; i++) {
      const x = (i / 255) * (stops.length - 1), k = Math.min(Math.floor(x), stops.length - 2), f = x - k;
      for (let c = 0; c < 3; c++) out[i * 3 + c] = Math.round(stops[k][c] * (1 - f) + stops[k + 1][c] * f);
    }
    return out;
  }
  let LUT = lut(false);
  function headColor(h, alpha) {
    const hue = (h * 360 / Math.max(1, DATA.stacks[state.stack].head_ids.length) + 210) % 360;
    return "hsla(" + hue + ",70%," + (state.dark ? "62%" : "45%") + "," + alpha + ")";
  }
  function paint(canvas, P, width, height) {
    const off = document.createElement("canvas");
    off.width = Math.max(1, P.nc); off.height = Math.max(1, P.nr);
    const octx = off.getContext("2d");
    const img = octx.createImageData(off.width, off.height);
    const scale = P.vmax > 0 ? 1 / P.vmax : 0, root = state.colour === "sqrt";
    for (let i = 0; i < P.nr * P.nc; i++) {
      const t = Math.min(1, P.data[i] * scale);
      const k = Math.round((root ? Math.sqrt(t) : t) * 255) * 3;
      img.data[i * 4] = LUT[k]; img.data[i * 4 + 1] = LUT[k + 1]; img.data[i * 4 + 2] = LUT[k + 2]; img.data[i * 4 + 3] = 255;
    }
    octx.putImageData(img, 0, 0);
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = width < off.width || height < off.height;
    ctx.imageSmoothingQuality = "high";
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(off, 0, 0, width, height);
  }

  // --------------------------------------------------------------- matrices
  /* What the current selection shows: [{head, m}] (head -1 = averaged or rollout). */
  async function selection(forMatrix) {
    const S = DATA.stacks[state.stack];
    if (state.rollout && S.rollout) {
      return [{ head: -1, name: "rollout after layer " + S.layer_ids[state.layer], m: await matrix(state.stack, "rollout", state.layer, 0) }];
    }
    const heads = state.heads.length ? state.heads : [state.focus];
    if (state.average && heads.length > 1) {
      const ms = await Promise.all(heads.map((h) => matrix(state.stack, "head", state.layer, h)));
      const out = new Float32Array(ms[0].length);
      for (const m of ms) for (let i = 0; i < out.length; i++) out[i] += m[i];
      for (let i = 0; i < out.length; i++) out[i] /= ms.length;
      return [{ head: -1, name: "mean of heads " + heads.map((h) => S.head_ids[h]).join(", "), m: out }];
    }
    const shown = forMatrix ? [heads.includes(state.focus) ? state.focus : heads[0]] : heads;
    const ms = await Promise.all(shown.map((h) => matrix(state.stack, "head", state.layer, h)));
    return shown.map((h, i) => ({ head: h, name: "head " + S.head_ids[h], m: ms[i] }));
  }
  function layerName() {
    return "layer " + DATA.stacks[state.stack].layer_ids[state.layer];
  }

  // ------------------------------------------------------------- head view
  const RH = 18;
  const LINE_MIN = 0.05;
  function rowMaxima(P) {
    const out = new Float32Array(P.nr);
    for (let r = 0; r < P.nr; r++) {
      let m = 0;
      for (let c = 0; c < P.nc; c++) if (P.data[r * P.nc + c] > m) m = P.data[r * P.nc + c];
      out[r] = m;
    }
    return out;
  }
  let headViewItems = [];
  function fillTokens(el, ax, side) {
    el.textContent = "";
    ax.idx.forEach((i, pos) => {
      const s = document.createElement("span");
      s.textContent = ax.labels[i];
      if (ax.special[i]) s.className = "special";
      s.dataset.pos = String(pos);
      s.addEventListener("mouseenter", () => drawHeadLines(side, pos));
      s.addEventListener("mouseleave", () => drawHeadLines(null, -1));
      el.appendChild(s);
    });
  }
  function drawHeadLines(side, pos) {
    const canvas = $("hv-canvas");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    document.querySelectorAll(".tokcol span.hot").forEach((s) => s.classList.remove("hot"));
    if (side) {
      const el = $(side === "q" ? "hv-left" : "hv-right").children[pos];
      if (el) el.classList.add("hot");
    }
    const W = canvas.width;
    let info = [], drawn = 0;
    /* a hovered token: a line for every weight of at least LINE_MIN of its row's maximum, so the faint
       rows of long inputs still show their strongest keys; opacity follows the weight, at least 0.1 and
       at least 0.6 x weight / row max. Every row at once: weights from 0.025, opacity = weight (at most
       40 lines per row, so long inputs stay fast) */
    for (const item of headViewItems) {
      const P = item.P, rowMax = item.rowMax;
      const buckets = new Map();
      for (let r = 0; r < P.nr; r++) {
        if (side === "q" && r !== pos) continue;
        const mx = rowMax[r];
        if (!(mx > 0)) continue;
        for (let c = 0; c < P.nc; c++) {
          if (side === "k" && c !== pos) continue;
          const w = P.data[r * P.nc + c];
          let a;
          if (side) {
            if (!(w > 0) || w < LINE_MIN * mx) continue;
            a = Math.round(Math.min(1, Math.max(w, 0.6 * w / mx, 0.1)) * 20);
          } else {
            a = Math.round(Math.min(1, w) * 20);
            if (a < 1) continue;
          }
          drawn++;
          if (!buckets.has(a)) buckets.set(a, []);
          buckets.get(a).push(r, c);
        }
      }
      for (const [a, list] of buckets) {
        ctx.strokeStyle = item.head < 0 ? (state.dark ? "rgba(96,165,250," + a / 20 + ")" : "rgba(37,99,235," + a / 20 + ")") : headColor(item.head, a / 20);
        ctx.lineWidth = side ? 2 : 1.5;
        ctx.beginPath();
        for (let i = 0; i < list.length; i += 2) {
          ctx.moveTo(0, list[i] * RH + RH / 2);
          ctx.lineTo(W, list[i + 1] * RH + RH / 2);
        }
        ctx.stroke();
      }
      if (side === "q" && P.nr > pos) {
        let best = 0;
        for (let c = 1; c < P.nc; c++) if (P.data[pos * P.nc + c] > P.data[pos * P.nc + best]) best = c;
        info.push(item.name + ": strongest key " + JSON.stringify(P.cols.labels[P.cols.idx[best]]) + " " + P.data[pos * P.nc + best].toFixed(4));
      }
    }
    setInfo(side === "q" ? info.join("   ") : "");  /* cleared when the pointer leaves and on every redraw */
    canvas.dataset.lines = String(drawn);
  }
  async function renderHead(gen) {
    if (isPooled(state.stack, state.layer)) return renderPooledHead();
    const sel = await selection(false);
    if (gen !== generation) return;
    headViewItems = sel.map((s) => { const P = project(s.m); return { head: s.head, name: s.name, P, rowMax: rowMaxima(P) }; });
    const P = headViewItems[0].P;
    fillTokens($("hv-left"), P.rows, "q");
    fillTokens($("hv-right"), P.cols, "k");
    const canvas = $("hv-canvas");
    canvas.height = Math.max(P.nr, P.nc, 1) * RH;
    canvas.style.height = canvas.height + "px";
    drawHeadLines(null, -1);
    $("hv-canvas").dataset.drawn = layerName() + " " + sel.map((s) => s.name).join(";");
  }

  // ----------------------------------------------------------- matrix view
  let matrixP = null, matrixCell = 1;
  async function renderMatrix(gen) {
    const sel = await selection(true);
    if (gen !== generation) return;
    const P = project(sel[0].m);
    matrixP = P;
    const n = Math.max(P.nr, P.nc, 1);
    const cell = Math.max(2, Math.min(36, Math.floor(640 / n)));
    matrixCell = cell;
    const canvas = $("mx-canvas");
    canvas.width = Math.max(1, P.nc * cell); canvas.height = Math.max(1, P.nr * cell);
    canvas.style.width = canvas.width + "px"; canvas.style.height = canvas.height + "px";
    canvas.dataset.cell = String(cell); canvas.dataset.rows = String(P.nr); canvas.dataset.cols = String(P.nc);
    paint(canvas, P, canvas.width, canvas.height);
    if (n <= 16 && cell >= 24) {
      const ctx = canvas.getContext("2d");
      ctx.font = Math.min(12, cell / 3) + "px system-ui, sans-serif";
      ctx.textAlign = "center"; ctx.textBaseline = "middle";
      for (let r = 0; r < P.nr; r++) for (let c = 0; c < P.nc; c++) {
        const v = P.data[r * P.nc + c];
        const t = P.vmax > 0 ? v / P.vmax : 0;
        ctx.fillStyle = (state.dark ? t < 0.6 : t > 0.5) ? (state.dark ? "#fff" : "#fff") : (state.dark ? "#000" : "#1d2330");
        ctx.fillText(v.toFixed(2), c * cell + cell / 2, r * cell + cell / 2);
      }
    }
    labels($("mx-rows"), P.rows, cell, "row", canvas.height);
    labels($("mx-cols"), P.cols, cell, "col", canvas.width);
    $("mx-legend").textContent = layerName() + ", " + sel[0].name + (state.level === "word" ? ", word level" : "") +
      ": colour " + (state.colour === "sqrt" ? "\u221a-scaled" : "linear") + " from 0 to " + P.vmax.toFixed(4) +
      (P.pooled ? " (pooled: row: block of query tokens, column: block of key tokens, labels are token positions)"
        : " (row: query, column: key)");
    canvas.dataset.drawn = layerName() + " " + sel[0].name;
  }
  function labels(el, ax, cell, kind, extent) {
    el.textContent = "";
    const step = Math.max(1, Math.ceil(13 / cell));
    let widest = 0;
    ax.idx.forEach((i, pos) => {
      if (pos % step !== 0) return;
      const s = document.createElement("span");
      const text = ax.labels[i];
      s.textContent = text.length > 40 ? text.slice(0, 39) + "\u2026" : text;
      s.title = text;
      widest = Math.max(widest, s.textContent.length);
      if (kind === "row") s.style.top = (pos * cell + cell / 2) + "px";
      else s.style.left = (pos * cell + cell / 2 - 4) + "px";
      el.appendChild(s);
    });
    const size = Math.min(260, 10 + widest * 7);
    if (kind === "row") { el.style.width = size + "px"; el.style.height = extent + "px"; }
    else { el.style.height = Math.round(size * 0.87) + "px"; el.style.width = extent + "px"; }
  }
  function setInfo(text, attrs) {
    const el = $("hover-info");
    el.textContent = text || "\u00a0";
    for (const k of ["row", "col", "value", "pooled"]) delete el.dataset[k];
    if (attrs) Object.assign(el.dataset, attrs);
  }
  function onMatrixHover(ev) {
    const P = matrixP;
    if (!P) return;
    const rect = ev.target.getBoundingClientRect();
    const c = Math.floor((ev.clientX - rect.left) / matrixCell), r = Math.floor((ev.clientY - rect.top) / matrixCell);
    if (r < -1 || c < -1 || r > P.nr || c > P.nc) return setInfo("");
    if (r < 0 || c < 0 || r >= P.nr || c >= P.nc) return; /* sub-pixel edge: keep the last cell */
    const v = P.data[r * P.nc + c];
    const qi = P.rows.idx[r], ki = P.cols.idx[c];
    if (P.pooled) return setInfo(pooledHoverText(P, r, c, v), { row: String(qi), col: String(ki), value: String(v), pooled: "1" });
    setInfo("query " + JSON.stringify(P.rows.labels[qi]) + " [" + qi + "] \u2192 key " + JSON.stringify(P.cols.labels[ki]) +
      " [" + ki + "]: " + v.toPrecision(4), { row: String(qi), col: String(ki), value: String(v) });
  }

  // ------------------------------------------------------------ model view
  /* Max-pool a projected matrix to at most size x size cells, so thin patterns survive in thumbnails. */
  function pool(P, size) {
    if (P.nr <= size && P.nc <= size) return P;
    const fr = Math.ceil(P.nr / size), fc = Math.ceil(P.nc / size);
    const nr = Math.ceil(P.nr / fr), nc = Math.ceil(P.nc / fc);
    const data = new Float32Array(nr * nc);
    for (let r = 0; r < P.nr; r++) {
      const o = Math.floor(r / fr) * nc;
      for (let c = 0; c < P.nc; c++) {
        const v = P.data[r * P.nc + c], k = o + Math.floor(c / fc);
        if (v > data[k]) data[k] = v;
      }
    }
    return { nr, nc, data, vmax: P.vmax };
  }
  async function renderModel(gen) {
    const S = DATA.stacks[state.stack];
    const grid = $("model-grid");
    grid.textContent = "";
    const H = S.head_ids.length;
    grid.style.gridTemplateColumns = "auto repeat(" + H + ", 74px)";
    grid.appendChild(document.createElement("div"));
    for (let h = 0; h < H; h++) {
      const d = document.createElement("div");
      d.className = "lab"; d.textContent = "head " + S.head_ids[h];
      grid.appendChild(d);
    }
    const canvases = [];
    for (let l = 0; l < S.layer_ids.length; l++) {
      const d = document.createElement("div");
      d.className = "lab"; d.textContent = "layer " + S.layer_ids[l] + pooledLabel(state.stack, l);
      grid.appendChild(d);
      for (let h = 0; h < H; h++) {
        const c = document.createElement("canvas");
        c.width = 72; c.height = 72;
        c.title = "layer " + S.layer_ids[l] + ", head " + S.head_ids[h] + pooledLabel(state.stack, l) + " (click to open)";
        c.dataset.layer = String(l); c.dataset.head = String(h);
        if (l === state.layer && state.heads.includes(h)) c.classList.add("sel");
        c.addEventListener("click", () => {
          state.layer = l; state.heads = [h]; state.focus = h; state.rollout = false;
          syncControls(); setView("matrix");
        });
        grid.appendChild(c);
        canvases.push([c, l, h]);
      }
    }
    for (const [c, l, h] of canvases) {
      const m = await matrix(state.stack, "head", l, h);
      if (gen !== generation) return;
      paint(c, pool(projectLayer(m, l), 72), 72, 72);
      c.dataset.drawn = "1";
      if (h === H - 1) await new Promise((res) => setTimeout(res, 0));
    }
  }

  // --------------------------------------------------------------- metrics
  function renderMetrics() {
    const S = DATA.stacks[state.stack];
    const grid = $("metrics-grid"), head = $("metrics-head");
    grid.textContent = ""; head.textContent = "";
    if (!S.metrics) {
      grid.textContent = "Per-head metrics are defined for square self-attention; pick the encoder or decoder attention.";
      return;
    }
    const M = S.metrics, k = M.columns.indexOf(state.metric);
    const H = S.head_ids.length;
    let lo = Infinity, hi = -Infinity;
    for (const row of M.values) { lo = Math.min(lo, row[k]); hi = Math.max(hi, row[k]); }
    const table = document.createElement("table");
    const tr0 = document.createElement("tr");
    tr0.appendChild(document.createElement("th"));
    for (let h = 0; h < H; h++) { const th = document.createElement("th"); th.textContent = "head " + S.head_ids[h]; tr0.appendChild(th); }
    table.appendChild(tr0);
    for (let l = 0; l < S.layer_ids.length; l++) {
      const tr = document.createElement("tr");
      const th = document.createElement("th"); th.textContent = "layer " + S.layer_ids[l]; tr.appendChild(th);
      for (let h = 0; h < H; h++) {
        const row = M.values[l * H + h];
        const td = document.createElement("td");
        const v = row[k];
        td.textContent = Number.isFinite(v) ? v.toFixed(3) : "";
        if (S.classes) {
          const s = document.createElement("span");
          s.className = "cls"; s.textContent = S.classes[l * H + h] || "";
          td.appendChild(s);
        }
        const t = hi > lo ? (v - lo) / (hi - lo) : 0;
        const q = Math.round(t * 255) * 3;
        td.style.background = "rgb(" + LUT[q] + "," + LUT[q + 1] + "," + LUT[q + 2] + ")";
        td.style.color = (state.dark ? t < 0.6 : t > 0.5) ? "#fff" : "#000";
        if (l === state.layer && h === state.focus) td.classList.add("sel");
        td.addEventListener("click", () => { state.layer = l; state.heads = [h]; state.focus = h; state.rollout = false; syncControls(); render(); });
        tr.appendChild(td);
      }
      table.appendChild(tr);
    }
    grid.appendChild(table);
    const row = M.values[state.layer * H + state.focus];
    const t2 = document.createElement("table");
    const cap = document.createElement("caption");
    cap.textContent = layerName() + ", head " + S.head_ids[state.focus] + (S.classes ? " (" + (S.classes[state.layer * H + state.focus] || "") + ")" : "");
    t2.appendChild(cap);
    M.columns.forEach((name, i) => {
      const tr = document.createElement("tr");
      const a = document.createElement("th"); a.textContent = name;
      const b = document.createElement("td"); b.textContent = row[i].toFixed(4);
      tr.appendChild(a); tr.appendChild(b); t2.appendChild(tr);
    });
    head.appendChild(t2);
  }

  // -------------------------------------------------------------- controls
  function option(sel, value, text) {
    const o = document.createElement("option");
    o.value = String(value); o.textContent = text;
    sel.appendChild(o);
  }
  function buildControls() {
    $("model-name").textContent = DATA.model || "";
    const it = $("input-text");
    const parts = DATA.is_encoder_decoder ? [["encoder", DATA.text], ["decoder", DATA.text_pair]] : [["A", DATA.text], ["B", DATA.text_pair]];
    const kept = DATA.kept_chars || [null, null];
    parts.forEach(([name, text], k) => {
      if (text === null || text === undefined) return;
      const s = document.createElement("span"); s.className = "seg"; s.textContent = name + ":";
      it.appendChild(s);
      /* a truncated input: show only what the model read, and say how much was cut (offsets count code
         points, as Python does, so the text is split by code point, not by UTF-16 unit) */
      const chars = Array.from(text);
      const keep = DATA.truncated && Number.isInteger(kept[k]) ? Math.min(kept[k], chars.length) : chars.length;
      it.appendChild(document.createTextNode(keep < chars.length ? chars.slice(0, keep).join("") : text));
      if (keep < chars.length) {
        const c = document.createElement("span"); c.className = "cut";
        c.textContent = " \u2026 [cut: " + (chars.length - keep).toLocaleString("en") + " more characters were not analysed]";
        it.appendChild(c);
      }
      it.appendChild(document.createTextNode("  "));
    });
    if (DATA.truncated) {
      const n = document.createElement("div"); n.id = "truncation-note"; n.className = "cut";
      n.textContent = "The input was longer than the model reads: it was cut to " + DATA.stacks[stackNames[0]].nk +
        " tokens, and only the text shown above was analysed.";
      it.parentNode.insertBefore(n, it.nextSibling);
    }
    const st = $("stack");
    for (const name of stackNames) option(st, name, DATA.stacks[name].label);
    if (stackNames.length < 2) $("stack-wrap").style.display = "none";
    if (!DATA.has_pair) $("pair-wrap").style.display = "none";
    const ms = $("metric");
    for (const name of DATA.metric_names) option(ms, name, name);
    st.addEventListener("change", () => { state.stack = st.value; state.layer = 0; state.heads = [0]; state.focus = 0; syncControls(); render(); });
    $("layer").addEventListener("change", () => { state.layer = Number($("layer").value); render(); });
    $("average").addEventListener("change", () => { state.average = $("average").checked; render(); });
    $("rollout").addEventListener("change", () => { state.rollout = $("rollout").checked; render(); });
    $("hide-special").addEventListener("change", () => { state.hideSpecial = $("hide-special").checked; render(); });
    $("level").addEventListener("change", () => { state.level = $("level").value; render(); });
    $("pair").addEventListener("change", () => { state.pair = $("pair").value; render(); });
    $("colour").addEventListener("change", () => { state.colour = $("colour").value; render(); });
    ms.addEventListener("change", () => { state.metric = ms.value; render(); });
    $("heads-all").addEventListener("click", () => { state.heads = DATA.stacks[state.stack].head_ids.map((_, i) => i); syncControls(); render(); });
    $("heads-none").addEventListener("click", () => { state.heads = [state.focus]; syncControls(); render(); });
    $("theme").addEventListener("click", () => {
      state.dark = !state.dark;
      document.body.classList.toggle("dark", state.dark);
      document.documentElement.style.background = state.dark ? "#12151c" : "";
      $("theme").textContent = state.dark ? "light" : "dark";
      LUT = lut(state.dark);
      render();
    });
    for (const b of $("tabs").querySelectorAll("button")) b.addEventListener("click", () => setView(b.dataset.view));
    $("mx-canvas").addEventListener("mousemove", onMatrixHover);
    $("mx-canvas").addEventListener("mouseleave", () => setInfo(""));
    syncControls();
  }
  function syncControls() {
    const S = DATA.stacks[state.stack];
    $("stack").value = state.stack;
    const ls = $("layer");
    ls.textContent = "";
    S.layer_ids.forEach((id, i) => option(ls, i, String(id) + pooledLabel(state.stack, i)));
    ls.value = String(state.layer);
    const hs = $("heads");
    hs.textContent = "";
    S.head_ids.forEach((id, i) => {
      const lab = document.createElement("label");
      lab.style.borderBottomColor = headColor(i, 1);
      const cb = document.createElement("input");
      cb.type = "checkbox"; cb.checked = state.heads.includes(i); cb.dataset.head = String(i);
      cb.addEventListener("change", () => {
        if (cb.checked) { state.heads = [...new Set([...state.heads, i])].sort((a, b) => a - b); state.focus = i; }
        else if (state.heads.length > 1) { state.heads = state.heads.filter((x) => x !== i); if (state.focus === i) state.focus = state.heads[0]; }
        else cb.checked = true;
        render();
      });
      lab.appendChild(cb);
      lab.appendChild(document.createTextNode(String(id)));
      hs.appendChild(lab);
    });
    $("average").checked = state.average;
    $("rollout").checked = state.rollout;
    $("rollout").disabled = !S.rollout;
    $("hide-special").checked = state.hideSpecial;
    $("level").value = state.level;
    $("pair").value = state.pair;
    $("colour").value = state.colour;
    $("pair").disabled = !hasPair();
    if (state.metric) $("metric").value = state.metric;
  }
  function setView(view) {
    state.view = view;
    for (const b of $("tabs").querySelectorAll("button")) b.classList.toggle("active", b.dataset.view === view);
    for (const v of ["head", "matrix", "model", "metrics", ...Object.keys(MODES)]) $("view-" + v).classList.toggle("hidden", v !== view);
    setInfo("");
    render();
  }
  async function render() {
    const gen = ++generation;
    syncPooledControls();
    document.body.dataset.rendering = "1";
    setInfo("");  /* a hover line describes what was drawn before: never keep it across a redraw */
    try {
      if (state.view === "head") await renderHead(gen);
      else if (state.view === "matrix") await renderMatrix(gen);
      else if (state.view === "model") await renderModel(gen);
      else if (MODES[state.view]) await MODES[state.view].render(gen);
      else renderMetrics();
      $("status").textContent = "";
    } catch (err) {
      $("status").textContent = "error: " + (err && err.message ? err.message : String(err));
      console.error(err);
    }
    if (gen === generation) {
      document.body.dataset.rendering = "0";
      if (document.body.dataset.ready !== "1") performance.mark("hai-ready");
      document.body.dataset.ready = "1";
    }
  }

  /* extra modes (explorer_<mode>.js, inlined only on the pages that need them) get one api before the
     controls are built: each adds its tab and section and may choose the opening view */
  const modeApi = { DATA, state, selection, setInfo, layerName, matrix, render, setView,
                    get LUT() { return LUT; }, generation: () => generation };
  for (const m of Object.values(MODES)) m.init(modeApi);
  buildControls();
  setView(state.view);
  window.hfAttnExplorer = { state, render, setView, DATA, cache, gunzip };  /* DATA, cache, gunzip: explorer_measures.js */
})();
