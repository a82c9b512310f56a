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
  });
})();
