"""The measures beyond attention weights (norm_layer, norm_res, norm_res_ln, ALTI, value zeroing, rollout, flow)
against independent computations from the models' own modules (forward hooks, explicit loops, networkx).

The model quantities (layer input, value vectors, output projection, the real LayerNorm input and output) are
read here by hooks on modules named per family, independently of ``capture/layout.py`` and
``capture/projections.py``.
"""

from __future__ import annotations

import networkx as nx
import pytest
import torch
from networkx.algorithms.flow import edmonds_karp

from hf_attn_inspect import AttentionInspector, InputError
from hf_attn_inspect.core.mixing import attention_flow, mixing_ratio, residual_mix, row_normalise
from hf_attn_inspect.stats.aggregate import attention_rollout

import tiny_models

TEXT = "The cat sat on the mat."
LAYER = 1


def _parts(model, family: str, layer: int):
    """``(block, value_module, value_slice, out_projection (weight [hidden, in], bias), norm_after)`` per family."""
    if family == "bert":
        block = model.encoder.layer[layer]
        dense = block.attention.output.dense
        return block, block.attention.self.value, slice(None), (dense.weight, dense.bias), block.attention.output.LayerNorm
    if family == "gpt2":
        block = model.transformer.h[layer]
        hidden = model.config.n_embd
        proj = block.attn.c_proj
        return block, block.attn.c_attn, slice(2 * hidden, 3 * hidden), (proj.weight.t(), proj.bias), block.ln_2
    block = model.model.layers[layer]
    return block, block.self_attn.v_proj, slice(None), (block.self_attn.o_proj.weight, None), block.post_attention_layernorm


def _inputs(inspector):
    """The tokenizer's inputs of TEXT, as the inspector passes them (GPT-2 adds token type embeddings)."""
    return dict(inspector.tokenizer(TEXT, return_tensors="pt"))


def _hooked(model, family, ids, layer):
    """One plain forward pass: the block's input, the value vectors, the norm-after's input and output."""
    block, value_mod, cols, _, after = _parts(model, family, layer)
    seen = {}

    def block_input(m, a, k):
        seen["x"] = (a[0] if a else k["hidden_states"])[0]

    def values(m, a, o):
        seen["v"] = o[0, :, cols]

    def norm(m, a, o):
        seen.update(y=a[0][0], out=o[0])
    hooks = [block.register_forward_pre_hook(block_input, with_kwargs=True), value_mod.register_forward_hook(values),
             after.register_forward_hook(norm)]
    try:
        with torch.no_grad():
            model(**ids)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.fixture(scope="module")
def tiny():
    cache = {}

    def get(family):
        if family not in cache:
            model = tiny_models.build(family)
            with torch.no_grad():  # random init leaves attention's share ~1e-7 of the output: make it count
                for name, p in model.named_parameters():
                    if any(k in name for k in ("attention.self.value", "attention.output.dense", "attn.c_attn",
                                               "attn.c_proj", "v_proj", "o_proj")) and p.dim() == 2:
                        p.mul_(15)
            cache[family] = (model, AttentionInspector(model, tiny_models.tokenizer()))
        return cache[family]
    return get


def _summands(model, family, inspector, result, layer=LAYER):
    """Explicit ``z_ij = sum_h alpha_ij f_h(x_j) + [i=j] x_i`` ``[T, T, hidden]`` (loops over i, j, h) and the hooks."""
    ids = _inputs(inspector)
    seen = _hooked(model, family, ids, layer)
    _, _, _, (weight, bias), _ = _parts(model, family, layer)
    alpha = result.layer(layer)
    heads, t = alpha.shape[0], alpha.shape[-1]
    v = seen["v"].reshape(t, -1)
    kv = v.shape[-1] // (weight.shape[1] // heads)
    d = weight.shape[1] // heads
    z = torch.zeros(t, t, weight.shape[0])
    attn = torch.zeros_like(z)
    for i in range(t):
        for j in range(t):
            for h in range(heads):
                vh = v[j, (h // (heads // kv)) * d: (h // (heads // kv) + 1) * d]
                attn[i, j] += alpha[h, i, j] * (vh @ weight[:, h * d:(h + 1) * d].t())
            z[i, j] = attn[i, j] + (seen["x"][i] if i == j else 0)
    return attn, z, bias, seen


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_norm_layer_and_norm_res_equal_explicit_sums(tiny, family):
    model, inspector = tiny(family)
    result = inspector(TEXT, measures=["norm", "norm_layer", "norm_res"])
    attn, z, _, _ = _summands(model, family, inspector, result)
    torch.testing.assert_close(result.measure("norm_layer")[LAYER], attn.norm(dim=-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result.measure("norm_res")[LAYER], z.norm(dim=-1), atol=1e-5, rtol=1e-4)
    # the per-layer norm is not the sum of the per-head norms (the heads' vectors partly cancel)
    assert (result.measure("norm")[LAYER].sum(0) >= result.measure("norm_layer")[LAYER] - 1e-5).all()


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_alti_transformed_vectors_reconstruct_the_real_output(tiny, family):
    """The check of the ALTI reference code: the transformed vectors plus the bias terms give the real output
    (BERT: the first LayerNorm's output; GPT-2: the residual stream after attention, ln_2's input)."""
    model, inspector = tiny(family)
    result = inspector(TEXT, measures=["alti", "norm_res_ln"] if family == "bert" else ["alti"])
    _, z, bias, seen = _summands(model, family, inspector, result)
    if family == "bert":
        ln = model.encoder.layer[LAYER].attention.output.LayerNorm
        std = (seen["y"].var(-1, unbiased=False) + ln.eps).sqrt()[:, None, None]
        transformed = ln.weight * (z - z.mean(-1, keepdim=True)) / std
        terms = ln.weight * (bias - bias.mean()) / std[:, 0] + ln.bias
        real = seen["out"]
        torch.testing.assert_close(result.measure("norm_res_ln")[LAYER], transformed.norm(dim=-1), atol=1e-4, rtol=1e-4)
    else:
        transformed, terms, real = z, bias, seen["y"]
    torch.testing.assert_close(transformed.sum(1) + terms, real, atol=1e-4, rtol=1e-4)
    contrib = (real.abs().sum(-1)[:, None] - (real[:, None] - transformed).abs().sum(-1)).clamp_min(0)
    alti = result.measure("alti")
    torch.testing.assert_close(alti[LAYER], row_normalise(contrib), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alti.sum(-1), torch.ones(alti.shape[:2]), atol=1e-5, rtol=0)
    if family == "gpt2":  # causal: a token takes nothing from later tokens
        assert torch.all(torch.triu(alti[LAYER], 1) == 0)


def test_alti_rollout_multiplies_the_layers(tiny):
    _, inspector = tiny("bert")
    result = inspector(TEXT, measures=["alti", "alti_rollout", "rollout"])
    alti = result.measure("alti")
    torch.testing.assert_close(result.measure("alti_rollout")[1], alti[1] @ alti[0])
    torch.testing.assert_close(result.measure("rollout"), attention_rollout(result))


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_value_zeroing_equals_one_token_at_a_time_reruns(tiny, family):
    """Zero token j's value vector with a hook on the model's own value projection, re-run the whole model once
    per token, compare layer outputs by cosine distance."""
    model, inspector = tiny(family)
    result = inspector(TEXT, measures=["value_zeroing"])
    ids = _inputs(inspector)
    block, value_mod, cols, _, _ = _parts(model, family, LAYER)
    outputs = []

    def keep(m, a, o):
        outputs.append((o[0] if isinstance(o, tuple) else o)[0])
    handle = block.register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(**ids)
            t = ids["input_ids"].shape[1]
            for j in range(t):
                def zero(m, a, o, j=j):
                    o = o.clone()
                    o[0, j, cols] = 0
                    return o
                h = value_mod.register_forward_hook(zero)
                model(**ids)
                h.remove()
    finally:
        handle.remove()
    original = outputs[0]
    dist = torch.stack([1 - torch.nn.functional.cosine_similarity(original, o, dim=-1) for o in outputs[1:]], 1)
    expected = row_normalise(dist.clamp_min(0))
    torch.testing.assert_close(result.measure("value_zeroing")[LAYER], expected, atol=1e-4, rtol=1e-3)


def test_value_zeroing_and_alti_in_a_padded_batch_match_single_texts(tiny):
    _, inspector = tiny("bert")
    names = ["value_zeroing", "alti", "norm_res_ln"]
    texts = [TEXT, "Hello, world! How are you today, my dear friend?"]
    batch = inspector(texts, measures=names)
    for text, got in zip(texts, batch):
        alone = inspector(text, measures=names)
        for name in names:
            torch.testing.assert_close(got.measure(name), alone.measure(name), atol=1e-4, rtol=1e-3)


def _nx_flows(a: torch.Tensor) -> torch.Tensor:
    """Edmonds-Karp maximum flow of every (node after layer l, input token) pair, a graph built here."""
    layers, t = a.shape[0], a.shape[-1]
    g = nx.DiGraph()
    for layer in range(layers):
        for i in range(t):
            for j in range(t):
                g.add_edge(("n", layer + 1, i), ("n", layer, j), capacity=float(a[layer, i, j]))
    return torch.tensor([[[nx.maximum_flow_value(g, ("n", layer + 1, i), ("n", 0, j), flow_func=edmonds_karp)
                           for j in range(t)] for i in range(t)] for layer in range(layers)])


@pytest.mark.parametrize("seed", range(4))
def test_flow_equals_edmonds_karp_on_random_graphs(seed):
    gen = torch.Generator().manual_seed(seed)
    layers, t = 2 + seed % 3, 4 + seed
    w = torch.rand(layers, t, t, generator=gen) ** 4  # peaked rows: flows well below 1
    if seed % 2:
        w = torch.tril(w)  # causal
    a = residual_mix(row_normalise(w))
    torch.testing.assert_close(attention_flow(a, normalise=False), _nx_flows(a).float(), atol=1e-6, rtol=1e-6)


def test_flow_of_unnormalised_sparse_capacities_equals_edmonds_karp():
    """Capacities that are not row-stochastic (row sums up to ~5: the integer scale follows the largest) with
    many zeros (pairs without a positive path are skipped, not solved)."""
    gen = torch.Generator().manual_seed(7)
    w = torch.rand(4, 6, 6, generator=gen) * 2
    w[w < 1.4] = 0  # about a third of the edges left: about half the deeper pairs have no path
    got = attention_flow(w, normalise=False)
    assert (got[2:] == 0).any() and (got[2:] > 0).any()
    torch.testing.assert_close(got, _nx_flows(w).float(), atol=1e-6, rtol=1e-6)


def test_flow_measure_on_a_12_token_input(tiny):
    _, inspector = tiny("bert")
    result = inspector("one two three four five six seven eight nine ten", measures=["flow"])
    assert result.seq_len == 12
    a = residual_mix(result.attentions.mean(1))
    torch.testing.assert_close(result.measure("flow"), row_normalise(_nx_flows(a).float()), atol=1e-5, rtol=1e-5)


def test_measures_that_cannot_apply_are_refused(tiny):
    _, inspector = tiny("gpt2")
    with pytest.raises(InputError, match="norm_res_ln.*post-LN"):
        inspector(TEXT, measures=["norm_res_ln"])
    _, bart = tiny("bart")
    with pytest.raises(InputError, match="alti"):
        bart(TEXT, "x", measures=["alti"])


def test_mixing_ratio_ordering_on_minilm(inspector):
    """Kobayashi et al. 2021: mixing by weights > by norms > with the residual; and [CLS]'s big weight is a small
    share by norm (Kobayashi et al. 2020)."""
    result = inspector("The quick brown fox jumps over the lazy dog, and the cat watches it from the window.",
                       measures=["norm", "norm_layer", "norm_res", "norm_res_ln"])
    ratio = {name: mixing_ratio(result.measure(name)).mean().item()
             for name in ("weights", "norm", "norm_layer", "norm_res", "norm_res_ln")}
    assert ratio["weights"] > ratio["norm"] > ratio["norm_res"]
    assert ratio["weights"] > ratio["norm_layer"] > ratio["norm_res"]
    assert 0 < ratio["norm_res_ln"] < 0.6
    cls_by_weight = result.measure("weights")[..., 0].mean()
    cls_by_norm = row_normalise(result.measure("norm"))[..., 0].mean()
    assert cls_by_norm < 0.4 * cls_by_weight
