"""Head ablation, head importance and pruning curves: against independent computations, and on a model
trained to do induction."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import tiny_models
from hf_attn_inspect import AttentionInspector
from hf_attn_inspect.capture.ablation import HeadScale, ablate, mean_head_outputs, parse_heads, resolve_heads
from hf_attn_inspect.capture.inputs import Batch
from hf_attn_inspect.core.errors import InputError
from hf_attn_inspect.runs.data import DataSpec
from hf_attn_inspect.runs.detectors import detect_heads, repeated_random_tokens
from hf_attn_inspect.runs.importance import ablation_effect, head_importance, pruning_curve
from conftest import SENTENCES

V, T = tiny_models.INDUCTION_V, tiny_models.INDUCTION_T
TEXTS = SENTENCES[:6]


def _inspector(tiny_model, tiny_tokenizer, family):
    return AttentionInspector(tiny_model(family), tiny_tokenizer)


def _out_proj(model, family, stack, layer):
    """The output projection that reads the heads' outputs (the independent check's hook point)."""
    if family == "bert":
        return model.encoder.layer[layer].attention.output.dense
    if family == "gpt2":
        return model.transformer.h[layer].attn.c_proj
    if family == "llama":
        return model.model.layers[layer].self_attn.o_proj
    layers = model.model.encoder.layers if stack == "encoder" else model.model.decoder.layers
    return layers[layer].encoder_attn.out_proj if stack == "cross" else layers[layer].self_attn.out_proj


def _main_output(out):
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


# ------------------------------------------------------------------ ablation == a pre-hook on the output projection
@pytest.mark.parametrize("family,heads", [
    ("bert", [(0, 1), (1, 3)]),
    ("gpt2", [(0, 0), (1, 2)]),
    ("llama", [(0, 3), (1, 1)]),  # GQA: 4 query heads on 2 key/value heads
    ("bart", [("encoder", 1, 0), ("decoder", 0, 2), ("cross", 1, 3)]),
])
def test_zero_ablation_equals_output_projection_pre_hook(tiny_model, tiny_tokenizer, family, heads):
    insp = _inspector(tiny_model, tiny_tokenizer, family)
    model = insp.model
    batch = insp.encode(["The cat sat on the mat.", "Attention, please!"])
    d = 32 // 4
    with torch.no_grad():
        with ablate(insp, heads):
            ours = _main_output(model(**batch.inputs))
        keys = resolve_heads(insp, heads)
        hooks = []
        for stack, layer, head in keys:
            def zero(module, args, h=head):
                x = args[0].clone()
                x[..., h * d:(h + 1) * d] = 0
                return (x,)
            hooks.append(_out_proj(model, family, stack, layer).register_forward_pre_hook(zero))
        try:
            ref = _main_output(model(**batch.inputs))
        finally:
            for h in hooks:
                h.remove()
        intact = _main_output(model(**batch.inputs))
    valid = (batch.inputs["decoder_attention_mask"] if family == "bart" else batch.inputs["attention_mask"]).bool()
    torch.testing.assert_close(ours[valid], ref[valid], atol=1e-6, rtol=0)
    assert (ours[valid] - intact[valid]).abs().max() > 1e-3  # the ablation did something


def test_inspector_call_inside_ablate_sees_the_ablated_model(inspector):
    text = "The keys and the queries meet in every head."
    before = inspector(text)
    with ablate(inspector, "0.0,0.1,0.2,0.3,0.4,0.5"):
        after = inspector(text)
    torch.testing.assert_close(before.attentions[0], after.attentions[0])  # layer 0's weights come before the edit
    assert (before.attentions[1] - after.attentions[1]).abs().max() > 1e-3


def test_mean_ablation_with_the_same_texts_keeps_the_mean_head_output(tiny_model, tiny_tokenizer):
    insp = _inspector(tiny_model, tiny_tokenizer, "bert")
    means = mean_head_outputs(insp, TEXTS, batch_size=4)
    assert means[("self", 0)].shape == (4, 8)
    batch = insp.encode(TEXTS)
    with torch.no_grad():
        intact = insp.model(**batch.inputs).last_hidden_state
        with ablate(insp, [(0, 2)], "mean", means=means):
            again = mean_head_outputs(insp, TEXTS, batch_size=3)
            ablated = insp.model(**batch.inputs).last_hidden_state
    torch.testing.assert_close(again[("self", 0)], means[("self", 0)], atol=1e-6, rtol=1e-5)  # all of layer 0
    assert (ablated - intact)[batch.valid].abs().max() > 1e-3  # the ablation changed the tokens' outputs
    with ablate(insp, [(0, 2)], "mean", reference=TEXTS):  # the same via reference texts
        torch.testing.assert_close(mean_head_outputs(insp, TEXTS)[("self", 1)], again[("self", 1)], atol=1e-6, rtol=1e-5)


def test_head_scale_groups_ablate_a_different_head_in_each_copy(tiny_model, tiny_tokenizer):
    insp = _inspector(tiny_model, tiny_tokenizer, "gpt2")
    batch = insp.encode(TEXTS[:3])
    scale = torch.ones(2, 4)
    scale[0, 1] = 0
    scale[1, 3] = 0
    rep = {k: v.repeat(2, 1) for k, v in batch.inputs.items()}
    both = insp.run(Batch(inputs=rep), [], edits=[HeadScale({("self", 1): scale})]).logits
    with torch.no_grad():
        for g, head in enumerate([1, 3]):
            with ablate(insp, [(1, head)]):
                one = insp.model(**batch.inputs).logits
            torch.testing.assert_close(both[3 * g:3 * (g + 1)], one, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ importance engine
@pytest.mark.parametrize("family,how", [("bert", "zero"), ("gpt2", "mean"), ("bart", "zero")])
def test_cached_layer_path_equals_plain_path(tiny_model, tiny_tokenizer, family, how):
    insp = _inspector(tiny_model, tiny_tokenizer, family)
    texts = TEXTS[:3] if family == "bart" else TEXTS
    fast = head_importance(insp, texts, how=how, batch_size=2)
    plain = head_importance(insp, texts, how=how, batch_size=2, cache_layers=False)
    np.testing.assert_allclose(fast["importance"], plain["importance"], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(fast["stderr"], plain["stderr"], atol=1e-5, rtol=1e-3)
    assert fast["importance"].abs().max() > 1e-6  # not all zero (tiny random BERT: 1 - cos moves ~1e-5)
    assert len(fast) == sum(n_l * n_h for n_l, n_h in insp.dims().values())
    if family == "bart":
        assert set(fast["stack"]) == {"encoder", "decoder", "cross"}


def test_ablation_importance_is_the_mean_per_sentence_objective_change(tiny_model, tiny_tokenizer):
    """Independent: run each sentence alone with a pre-hook zeroing the head, next-token loss by hand."""
    insp = _inspector(tiny_model, tiny_tokenizer, "gpt2")
    model = insp.model
    texts = TEXTS[:4]
    df = head_importance(insp, texts, batch_size=3).set_index(["layer", "head"])
    layer, head = 1, 2

    def loss(text, hook):
        enc = tiny_tokenizer(text, return_tensors="pt")  # with token_type_ids, which GPT-2 embeds too
        ids = enc["input_ids"]
        h = _out_proj(model, "gpt2", "self", layer).register_forward_pre_hook(hook) if hook else None
        try:
            with torch.no_grad():
                logits = model(**enc).logits
        finally:
            if h:
                h.remove()
        return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()

    def zero(module, args):
        x = args[0].clone()
        x[..., head * 8:(head + 1) * 8] = 0
        return (x,)

    diffs = np.array([loss(t, zero) - loss(t, None) for t in texts])
    assert df.loc[(layer, head), "importance"] == pytest.approx(diffs.mean(), abs=1e-5)
    assert df.loc[(layer, head), "stderr"] == pytest.approx(diffs.std(ddof=1) / np.sqrt(len(diffs)), abs=1e-5)
    assert df.loc[(layer, head), "objective"] == pytest.approx(np.mean([loss(t, None) for t in texts]), abs=1e-5)


def test_gradient_importance_equals_finite_differences(tiny_model, tiny_tokenizer):
    """|dL/d xi| per sentence against a central difference of a gate applied by a pre-hook."""
    insp = _inspector(tiny_model, tiny_tokenizer, "llama")
    model = insp.model
    texts = TEXTS[:3]
    df = head_importance(insp, texts, method="gradient", batch_size=2).set_index(["layer", "head"])
    layer, head, eps = 0, 1, 1e-3

    def loss(text, gate):
        enc = tiny_tokenizer(text, return_tensors="pt")
        ids = enc["input_ids"]

        def scale(module, args):
            x = args[0].clone()
            x[..., head * 8:(head + 1) * 8] *= gate
            return (x,)

        h = _out_proj(model, "llama", "self", layer).register_forward_pre_hook(scale)
        try:
            with torch.no_grad():
                logits = model(**enc).logits.double()
        finally:
            h.remove()
        return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()

    fd = np.array([abs(loss(t, 1 + eps) - loss(t, 1 - eps)) / (2 * eps) for t in texts])
    assert df.loc[(layer, head), "importance"] == pytest.approx(fd.mean(), rel=2e-2, abs=1e-4)
    assert (df["importance"] > 0).all()


def test_objectives_follow_the_model_type(tiny_tokenizer, inspector):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)
    mlm = AttentionInspector(tf.BertForMaskedLM(cfg).eval(), tiny_tokenizer)
    df = head_importance(mlm, TEXTS[:3], seed=3)
    assert df.attrs["unit"] == "nats" and "masked" in df.attrs["objective"]
    assert df["objective"].iloc[0] > 5  # about ln(30522) = 10.3 for random weights
    again = head_importance(mlm, TEXTS[:3], seed=3, batch_size=2)  # the masking depends on the row, not the batch
    np.testing.assert_allclose(df["importance"], again["importance"], atol=1e-5)

    clf = AttentionInspector(tf.BertForSequenceClassification(cfg).eval(), tiny_tokenizer)
    data = __import__("datasets").Dataset.from_dict({"text": TEXTS, "label": [0, 1, 0, 1, 1, 0]})
    df = head_importance(clf, data, label_column="label")
    assert {"accuracy", "accuracy_change"} <= set(df.columns)
    assert 0 <= df["accuracy"].iloc[0] <= 1
    with pytest.raises(InputError, match="label"):
        head_importance(clf, TEXTS)

    # a sentence encoder: 1 - cos of the pooled embedding; the intact model scores 0
    enc = head_importance(inspector, TEXTS[:2], batch_size=2)
    assert enc.attrs["unit"] == "1 - cos" and enc["objective"].abs().max() < 1e-6
    assert (enc["importance"] >= 0).all() and enc["importance"].max() > 1e-3
    assert set(enc["pattern"]) <= {"previous", "next", "diagonal", "column", "uniform", "broad", "sparse", "mixed"}


def test_custom_objective_and_bad_input(tiny_model, tiny_tokenizer):
    insp = _inspector(tiny_model, tiny_tokenizer, "gpt2")

    def mean_logit(output, batch):
        return output.logits.mean((1, 2))

    df = head_importance(insp, TEXTS[:3], objective=mean_logit)
    assert df.attrs["objective"] == "mean_logit"
    with pytest.raises(InputError, match="does not exist"):
        ablation_effect(insp, TEXTS, [(5, 0)])
    with pytest.raises(InputError, match="LAYER.HEAD"):
        parse_heads("1-2")
    with pytest.raises(InputError, match="method"):
        head_importance(insp, TEXTS, method="magic")
    with pytest.raises(InputError, match="one value per sentence"):
        head_importance(insp, TEXTS[:2], objective=lambda o, b: o.logits.mean())


def test_pruning_curve_steps_and_effect(tiny_model, tiny_tokenizer):
    insp = _inspector(tiny_model, tiny_tokenizer, "gpt2")
    imp = head_importance(insp, TEXTS, batch_size=4)
    curve = pruning_curve(insp, TEXTS, imp, step=0.25, batch_size=4)
    assert curve["heads_removed"].tolist() == [0, 2, 4, 6, 8]
    assert curve["objective"].iloc[0] == pytest.approx(imp["objective"].iloc[0], abs=1e-5)
    first = curve["removed"].iloc[1].split()
    order = imp.sort_values(["importance", "stack", "layer", "head"])
    assert first == [f"{l}.{h}" for l, h in zip(order["layer"][:2], order["head"][:2])]
    # removing the first step's heads together, measured on its own, gives the curve's value
    eff = ablation_effect(insp, TEXTS, first, batch_size=4)
    assert eff["after"] == pytest.approx(curve["objective"].iloc[1], abs=1e-5)
    assert eff["before"] == pytest.approx(curve["objective"].iloc[0], abs=1e-5)
    re = pruning_curve(insp, TEXTS, imp, step=0.5, reestimate=True, method="gradient", batch_size=4)
    assert re["heads_removed"].tolist() == [0, 4, 8]
    assert re["objective"].iloc[-1] == pytest.approx(curve["objective"].iloc[-1], abs=1e-5)  # all heads gone either way


def test_data_spec_runs_as_the_keywords(tiny_model, tiny_tokenizer):
    """A DataSpec (as the data argument or data=) gives the numbers its shortcut keywords give, and is really used."""
    insp = _inspector(tiny_model, tiny_tokenizer, "gpt2")
    spec = DataSpec(source=TEXTS, batch_size=4, max_length=6)
    by_keywords = head_importance(insp, TEXTS, batch_size=4, max_length=6)
    by_spec = head_importance(insp, data=spec)
    pd.testing.assert_frame_equal(by_spec, by_keywords)
    assert by_spec.attrs["counts"]["truncated"] > 0
    assert by_spec.attrs["run"]["parameters"]["max_length"] == 6
    full = head_importance(insp, TEXTS, batch_size=4)
    assert full["objective"].iloc[0] != pytest.approx(by_spec["objective"].iloc[0], abs=1e-6)  # truncation counted
    curve = pruning_curve(insp, spec, by_spec, step=0.5)
    pd.testing.assert_frame_equal(curve, pruning_curve(insp, TEXTS, by_keywords, step=0.5, batch_size=4, max_length=6))
    assert curve["objective"].iloc[0] == pytest.approx(by_spec["objective"].iloc[0], abs=1e-5)
    assert ablation_effect(insp, spec, "0.1") == ablation_effect(insp, TEXTS, "0.1", batch_size=4, max_length=6)
    with pytest.raises(InputError, match="max_length"):
        head_importance(insp, spec, max_length=8)
    with pytest.raises(InputError, match="stream"):
        ablation_effect(insp, TEXTS, "0.1", streaming=True)
    with pytest.raises(InputError, match="label column 'nope' not found"):
        pruning_curve(insp, TEXTS, by_spec, label_column="nope")
    with pytest.raises(TypeError, match="colum"):
        head_importance(insp, TEXTS, colum="text")


def test_model_is_unchanged_after_every_call(tiny_model, tiny_tokenizer):
    insp = _inspector(tiny_model, tiny_tokenizer, "bart")
    model = insp.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    impl = model.config._attn_implementation
    grads = [p.requires_grad for p in model.parameters()]
    model.train()
    with ablate(insp, [("cross", 0, 1)]):
        pass
    head_importance(insp, TEXTS[:2], how="mean")
    head_importance(insp, TEXTS[:2], method="gradient")
    pruning_curve(insp, TEXTS[:2], step=0.5, method="gradient")
    ablation_effect(insp, TEXTS[:2], "decoder.1.1")
    assert model.training
    model.eval()
    assert model.config._attn_implementation == impl
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    def ours(hooks):  # transformers installs its own output-recording hooks on first use: not ours to remove
        return [h for h in hooks.values() if not getattr(h, "__module__", "").startswith("transformers")]

    for m in model.modules():
        assert "forward" not in m.__dict__ and not ours(m._forward_hooks) and not ours(m._forward_pre_hooks)


def test_sharded_run_writes_and_resumes(tiny_model, tiny_tokenizer, tmp_path):
    from hf_attn_inspect.core.errors import OutputError

    insp = _inspector(tiny_model, tiny_tokenizer, "bert")
    whole = head_importance(insp, TEXTS, batch_size=2)
    df = head_importance(insp, TEXTS, batch_size=2, shard_size=4, out=tmp_path / "run")
    pd.testing.assert_series_equal(df["importance"], whole["importance"], atol=1e-6, check_exact=False)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "finished" and run["shards_total"] == 2
    table = pd.read_csv(tmp_path / "run" / "head_importance.csv")
    assert list(table.columns[:7]) == ["stack", "layer", "head", "importance", "stderr", "rank", "pattern"]
    with pytest.raises(OutputError, match="finished run"):
        head_importance(insp, TEXTS, batch_size=2, shard_size=4, out=tmp_path / "run")


# ------------------------------------------------------------------ the induction model
def _second_copy_loss(output, batch):
    ids = batch.inputs["input_ids"]
    logits = output.logits[:, T + 1:-1]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, T + 2:], reduction="none").mean(1)


@pytest.fixture(scope="module")
def induction(trained_decoder):
    insp = AttentionInspector(trained_decoder, None)
    ids = repeated_random_tokens(V, seq_len=T, num_sequences=32, seed=7, bos=V)
    prev = detect_heads(insp, "previous_token", seq_len=T, num_sequences=32, seed=123)
    # previous-token heads: at least 0.3 of their attention on the previous token (an untrained head: ~0.07)
    prev_heads = {(int(r.layer), int(r.head)) for r in prev.itertuples() if r.score > 0.3}
    assert prev_heads and all(layer == 0 for layer, _ in prev_heads), prev
    return insp, ids, prev_heads


@pytest.mark.xdist_group("induction_decoder")  # with test_analysis's: trained once
def test_previous_token_head_ranks_first_by_ablation(induction):
    insp, ids, prev_heads = induction
    df = head_importance(insp, ids)
    best = df.sort_values("rank").iloc[0]
    head = (int(best["layer"]), int(best["head"]))
    assert head in prev_heads, df
    effect = ablation_effect(insp, ids, [head], objective=_second_copy_loss)
    assert effect["change"] > 1.0, effect  # nats on the repeated half


@pytest.mark.xdist_group("induction_decoder")
def test_gradient_importance_ranks_previous_token_head_in_top_two(induction):
    insp, ids, prev_heads = induction
    df = head_importance(insp, ids, method="gradient")
    top2 = {(int(r.layer), int(r.head)) for r in df.sort_values("rank").head(2).itertuples()}
    assert top2 & prev_heads, df


# ------------------------------------------------------------------ tables, explorer, command line
def test_head_table_and_explorer_take_the_importance_column(inspector):
    from hf_attn_inspect.stats.patterns import head_table
    from hf_attn_inspect.stats.tables import format_head_table
    from hf_attn_inspect.views.explorer import explorer_html

    imp = head_importance(inspector, TEXTS[:2], method="gradient")
    result = inspector(TEXTS[4])
    table = head_table(result, importance=imp)
    assert len(table) == 72 and table["importance"].notna().all()
    merged = table.merge(imp, on=["layer", "head"], suffixes=("", "_imp"))
    np.testing.assert_allclose(merged["importance"], merged["importance_imp"])
    assert (table["importance_rank"] == merged["rank"]).all()
    assert "importance" in format_head_table(table).splitlines()[0]
    page = explorer_html(result, importance=imp)
    data = json.loads(page.split('<script type="application/json" id="hai-data">')[1].split("</script>")[0])
    assert "importance" in data["metric_names"]
    m = data["stacks"]["self"]["metrics"]
    k = m["columns"].index("importance")
    np.testing.assert_allclose([row[k] for row in m["values"]], imp["importance"], rtol=1e-5, atol=1e-6)


def test_importance_command_writes_every_file(tmp_path, capsys):
    from PIL import Image

    from hf_attn_inspect.cli import main

    out = tmp_path / "imp"
    code = main(["importance", "--method", "gradient", "--limit", "2", "--batch-size", "2", "--prune-step", "0.5", "--heads", "5.9,5.10",
                 "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "removing self.5.9, self.5.10" in printed
    for name in ("head_importance.csv", "importance_map.png", "pruning_curve.csv", "pruning_curve.png", "report.md", "run.json"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "head_importance.csv")
    assert len(table) == 72 and sorted(table["rank"]) == list(range(1, 73))
    curve = pd.read_csv(out / "pruning_curve.csv")
    assert curve["heads_removed"].tolist() == [0, 36, 72]
    report = (out / "report.md").read_text()
    assert "gradient" in report and "Pruning curve" in report and "Chosen heads removed together" in report
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["ablation_effect"]["heads"] == ["self.5.9", "self.5.10"]
    with Image.open(out / "importance_map.png") as im:
        assert im.size[0] > 600 and im.size[1] > 300
    with Image.open(out / "pruning_curve.png") as im:
        assert im.size[0] > 400 and im.size[1] > 300


@pytest.mark.parametrize("argv,message", [
    (["--heads", "5-9"], "LAYER.HEAD"),
    (["--heads", "9.0"], "does not exist"),
    (["--label-column", "nope"], "label column 'nope' not found"),
    (["--column", "nope"], "column 'nope' not found"),
    (["--prune-step", "0"], "--prune-step"),
])
def test_importance_command_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    from hf_attn_inspect.cli import main

    code = main(["importance", "--limit", "2", "--no-progress", "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_importance_map_colour_bar_covers_only_the_signs_that_occur():
    """Issue 23: with every value >= 0 the colour bar runs 0..max (not -max..max); with both signs it stays
    symmetric around 0."""
    import matplotlib.pyplot as plt

    from hf_attn_inspect.views.importance import plot_importance_map

    rng = np.random.default_rng(0)
    values = np.abs(rng.normal(0, 0.02, 12))
    df = pd.DataFrame({"layer": np.repeat([0, 1, 2], 4), "head": np.tile([0, 1, 2, 3], 3), "importance": values})
    ax = plot_importance_map(df)
    norm = ax.collections[0].norm
    assert (norm.vmin, norm.vmax) == (0.0, pytest.approx(values.max()))
    plt.close(ax.figure)
    df["importance"] = values - values.mean()
    ax = plot_importance_map(df)
    norm = ax.collections[0].norm
    lim = float(np.abs(df["importance"]).max())
    assert (norm.vmin, norm.vmax) == (pytest.approx(-lim), pytest.approx(lim))
    plt.close(ax.figure)
