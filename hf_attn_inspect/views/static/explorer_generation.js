/* hf-attn-inspect explorer, generation mode (loaded before explorer.js on pages of a GenerationResult).
   The generated text, each token shaded by the model's probability of it; hover or click a token (or move
   the step slider) to see what the model looked at when it wrote it: the row of the position before it,
   over the prompt and the tokens generated so far (and the source, through cross-attention, for
   encoder-decoder models), for the layer chosen above and its focused head, the head average or the
   rollout; and the step's most probable alternatives. Tokens are inserted with textContent only. */
"use strict";
(function () {
  const modes = (window.hfAttnModes = window.hfAttnModes || {});
  let api = null, G = null, step = 0;
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const fmt = (p) => (p >= 0.01 ? p.toFixed(2) : p.toExponential(0));

  const CSS =
    ".gen-title{margin:6px 0;font-weight:600}.gen-note{font-weight:400;color:var(--muted)}" +
    ".gen-text,.gen-tokens{line-height:2;margin:4px 0 10px}.gen-tok{padding:2px 3px;margin:1px;border-radius:3px;" +
    "cursor:default;white-space:pre}#gen-text .gen-tok{cursor:pointer}.gen-current{outline:2px solid var(--accent)}" +
    ".gen-prompt{border-bottom:2px solid #98a2b3}.gen-generated{border-bottom:2px solid #d92d20}" +
    ".gen-sep{color:#d92d20;font-weight:700;margin:0 4px}.gen-what{color:var(--muted);margin-top:6px}" +
    ".gen-alts{border-collapse:collapse;margin-top:8px}.gen-alts td,.gen-alts th{padding:2px 10px;text-align:left}" +
    ".gen-chosen{font-weight:700}.gen-slider input{width:320px;vertical-align:middle}";

  function init(a) {
    api = a;
    G = a.DATA.generation;
    const style = document.createElement("style");
    style.textContent = CSS;
    document.head.appendChild(style);
    const tab = el("button", "", "generation");
    tab.type = "button";
    tab.dataset.view = "generation";
    tab.addEventListener("click", () => api.setView("generation"));
    const tabs = document.getElementById("tabs");
    tabs.insertBefore(tab, tabs.firstChild);
    const sec = el("section", "view hidden");
    sec.id = "view-generation";
    const n = G.probabilities.length;
    sec.innerHTML =
      '<div class="gen-title">generated text <span class="gen-note">(shade: the model\u2019s probability of each token; ' +
      "hover or click one)</span></div><div id=\"gen-text\" class=\"gen-text\"></div>" +
      '<label class="gen-slider">step <input type="range" id="gen-step" min="0" value="0"> <span id="gen-step-label"></span></label>' +
      '<div id="gen-what" class="gen-what"></div><div id="gen-context" class="gen-tokens"></div>' +
      '<div id="gen-cross-wrap" class="hidden"><div class="gen-what" id="gen-cross-what"></div><div id="gen-cross" class="gen-tokens"></div></div>' +
      '<table id="gen-alts" class="gen-alts"><thead><tr><th>alternative</th><th>probability</th></tr></thead><tbody></tbody></table>';
    document.querySelector("main").appendChild(sec);
    const slider = document.getElementById("gen-step");
    slider.max = String(Math.max(0, n - 1));
    slider.addEventListener("input", () => select(Number(slider.value)));
    const labels = tokens(G.stack);
    const text = document.getElementById("gen-text");
    for (let k = 0; k < n; k++) {
      const s = el("span", "gen-tok", labels[G.prompt_length + k]);
      s.dataset.step = String(k);
      s.dataset.prob = String(G.probabilities[k]);
      s.title = "p = " + fmt(G.probabilities[k]);
      s.style.background = "rgba(37, 99, 235, " + (0.1 + 0.6 * G.probabilities[k]).toFixed(3) + ")";
      s.addEventListener("mouseenter", () => select(k));
      s.addEventListener("click", () => select(k));
      text.appendChild(s);
    }
  }

  function tokens(stack) {
    const S = api.DATA.stacks[stack];
    return api.DATA.axes[S.q_axis].labels;
  }
  function select(k) {
    step = k;
    api.render();
  }

  /* The weights of the query row of position row: the focused head, the head average or the rollout. */
  async function row(stack, r) {
    const st = api.state, S = api.DATA.stacks[stack];
    if (st.rollout && S.rollout) {
      const m = await api.matrix(stack, "rollout", st.layer, 0);
      return m.slice(r * S.nk, (r + 1) * S.nk);
    }
    const heads = st.average ? S.head_ids.map((_, i) => i) : [st.focus];
    const out = new Float32Array(S.nk);
    for (const h of heads) {
      const m = await api.matrix(stack, "head", st.layer, h);
      for (let j = 0; j < S.nk; j++) out[j] += m[r * S.nk + j] / heads.length;
    }
    return out;
  }
  function what(stack) {
    const st = api.state, S = api.DATA.stacks[stack];
    const layer = "layer " + S.layer_ids[st.layer];
    if (st.rollout && S.rollout) return layer + ", rollout";
    return layer + ", " + (st.average ? "head average" : "head " + S.head_ids[st.focus]);
  }
  function shade(container, labels, weights, upto, prompt, lut) {
    container.textContent = "";
    let max = 0;
    for (let j = 0; j < upto; j++) max = Math.max(max, weights[j]);
    for (let j = 0; j < upto; j++) {
      if (prompt !== null && j === prompt) container.appendChild(el("span", "gen-sep", "|"));
      const s = el("span", "gen-tok " + (prompt === null ? "gen-source" : j < prompt ? "gen-prompt" : "gen-generated"), labels[j]);
      const i = max > 0 ? Math.round((255 * weights[j]) / max) : 0;
      s.style.background = "rgb(" + lut[i * 3] + "," + lut[i * 3 + 1] + "," + lut[i * 3 + 2] + ")";
      s.style.color = i > 150 ? "#fff" : "";
      s.dataset.pos = String(j);
      s.dataset.weight = String(weights[j]);
      s.title = labels[j] + ": " + weights[j].toFixed(4);
      container.appendChild(s);
    }
  }

  async function render() {
    const n = G.probabilities.length;
    step = Math.min(Math.max(step, 0), n - 1);
    document.getElementById("gen-step").value = String(step);
    const labels = tokens(G.stack);
    const r = G.prompt_length + step - 1;  /* the query whose output predicted the generated token */
    const tok = labels[G.prompt_length + step];
    document.getElementById("gen-step-label").textContent = step + 1 + " of " + n + ": \u201c" + tok + "\u201d, p = " + fmt(G.probabilities[step]);
    for (const s of document.querySelectorAll("#gen-text .gen-tok")) s.classList.toggle("gen-current", Number(s.dataset.step) === step);
    const weights = await row(G.stack, r);
    document.getElementById("gen-what").textContent =
      "what the model looked at when it wrote \u201c" + tok + "\u201d (" + what(G.stack) + "; the row of position " + r +
      ", the token before it): prompt | generated";
    const ctx = document.getElementById("gen-context");
    ctx.dataset.row = String(r);
    shade(ctx, labels, weights, r + 1, G.prompt_length, api.LUT);
    const wrap = document.getElementById("gen-cross-wrap");
    wrap.classList.toggle("hidden", !G.cross);
    if (G.cross) {
      const S = api.DATA.stacks.cross;
      const cw = await row("cross", r);
      document.getElementById("gen-cross-what").textContent = "source, through cross-attention (" + what("cross") + ")";
      shade(document.getElementById("gen-cross"), api.DATA.axes[S.k_axis].labels, cw, S.nk, null, api.LUT);
    }
    const body = document.querySelector("#gen-alts tbody");
    body.textContent = "";
    for (const [t, p] of G.alternatives[step]) {
      const tr = el("tr", t === tok ? "gen-chosen" : "");
      tr.appendChild(el("td", "", t));
      tr.appendChild(el("td", "", fmt(p)));
      body.appendChild(tr);
    }
  }

  modes.generation = { init, render, get step() { return step; }, select };
})();
