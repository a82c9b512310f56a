/* hf-attn-inspect explorer, measure selector: flips every view between the attention weights and the
   measures the page carries (DATA.stacks.<main>.measures: norm, ALTI, value zeroing, rollout, flow...; each
   quantised like the weights, rows as shares summing to 1, per-layer measures repeated over the heads). */
"use strict";
(function () {
  const X = window.hfAttnExplorer;
  if (!X) return;
  const S = X.DATA.stacks[Object.keys(X.DATA.stacks)[0]];
  if (!S.measures) return;
  const weights = { levels: S.levels, steps: S.steps };
  const label = document.createElement("label");
  label.id = "measure-wrap";
  label.title = "what each token takes from each other: weights (where it looks) or a measure (see docs/guides/measures.md)";
  label.appendChild(document.createTextNode("measure "));
  const select = document.createElement("select");
  select.id = "measure";
  for (const name of ["weights", ...Object.keys(S.measures)]) {
    const o = document.createElement("option");
    o.value = name;
    o.textContent = name;
    select.appendChild(o);
  }
  label.appendChild(select);
  const anchor = document.getElementById("rollout").parentElement;
  anchor.parentElement.insertBefore(label, anchor);
  select.addEventListener("change", () => {
    const m = select.value === "weights" ? weights : S.measures[select.value];
    S.levels = m.levels;
    S.steps = m.steps;
    X.state.measure = select.value;
    X.cache.clear();
    X.render();
    strip();
  });

  /* The strip: one query token's row in the current layer under every measure, side by side (heads averaged). */
  const labels = X.DATA.axes[S.q_axis].labels;
  const box = document.createElement("div");
  box.id = "measure-strip";
  box.className = "controls";
  box.appendChild(document.createTextNode("strip: what "));
  const pick = document.createElement("select");
  pick.id = "strip-token";
  labels.forEach((t, i) => { const o = document.createElement("option"); o.value = String(i); o.textContent = i + " " + t; pick.appendChild(o); });
  box.appendChild(pick);
  box.appendChild(document.createTextNode(" takes from each token, per measure"));
  const table = document.createElement("table");
  table.id = "strip-table";
  table.style.display = "block";
  table.style.maxHeight = "240px";
  table.style.overflowY = "auto";
  box.appendChild(table);
  const nav = document.getElementById("controls");
  nav.parentElement.insertBefore(box, nav.nextSibling);
  const all = { weights: weights, ...S.measures };
  async function row(m, l, i) {
    const nh = S.head_ids.length, nq = S.nq, nk = S.nk;
    const st = await X.gunzip(m.steps);
    const steps = new Float32Array(st.buffer, st.byteOffset, st.byteLength / 4);
    const out = new Float32Array(nk);
    for (let h = 0; h < nh; h++) {
      const q = await X.gunzip(m.levels[l][h]);
      const s = steps[l * nh * nq + h * nq + i];
      for (let j = 0; j < nk; j++) out[j] += q[i * nk + j] * s / nh;
    }
    return out;
  }
  async function strip() {
    const l = X.state.layer, i = Number(pick.value);
    const names = Object.keys(all);
    const rows = await Promise.all(names.map((n) => row(all[n], l, i)));
    table.textContent = "";
    const head = table.insertRow();
    head.insertCell().textContent = "key";
    names.forEach((n) => { const c = head.insertCell(); c.textContent = n; c.style.fontWeight = n === X.state.measure ? "bold" : ""; });
    labels.forEach((t, j) => {
      const tr = table.insertRow();
      tr.insertCell().textContent = t;
      rows.forEach((r) => {
        const c = tr.insertCell();
        c.textContent = r[j].toFixed(2);
        c.dataset.value = String(r[j]);
        c.style.background = "rgba(90, 60, 160, " + Math.min(1, r[j]).toFixed(3) + ")";
        c.style.color = r[j] > 0.5 ? "white" : "";
      });
    });
    table.dataset.drawn = "layer " + S.layer_ids[l] + " token " + i;
  }
  pick.addEventListener("change", strip);
  document.getElementById("layer").addEventListener("change", () => setTimeout(strip, 0));
  strip();
})();
