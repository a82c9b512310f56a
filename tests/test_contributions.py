"""Values, head outputs, per-head contributions and the norm measure against the models' own modules.

Every check compares what the recorders kept with forward hooks on the model's own value and output
projection layers (named here per family, independently of ``capture/projections.py``), and the ``norm``
measure with a computation from the model's weights and the layer input.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from hf_attn_inspect import AttentionInspector, CaptureError, InputError
from hf_attn_inspect.capture.contributions import ContributionsRecorder, HeadOutputsRecorder, ValuesRecorder
from hf_attn_inspect.capture.inputs import Batch
from hf_attn_inspect.capture.interface import use_implementation
from hf_attn_inspect.capture.projections import output_projection, projection_module
from hf_attn_inspect.capture.request import CaptureRequest, CaptureResult

import tiny_models

TEXTS = ["The cat sat on the mat.", "Hello, world!", "A"]
TARGETS = ["Le chat.", "Bonjour le monde entier", "x"]
V = 30522
LLAMA_LIKE = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)


def _build(family: str):
    torch.manual_seed(0)
    if family in ("bert", "gpt2", "llama", "bart"):
        return tiny_models.build(family)
    if family == "roberta":
        cfg = tf.RobertaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=130, pad_token_id=1)
        return tf.RobertaModel(cfg).eval()
    if family == "distilbert":
        cfg = tf.DistilBertConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128)
        return tf.DistilBertModel(cfg).eval()
    if family == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**LLAMA_LIKE)).eval()
    if family == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**LLAMA_LIKE)).eval()
    if family == "gemma":  # heads x head_dim (64) differs from the hidden size (32); one key/value head
        cfg = tf.GemmaConfig(**{**LLAMA_LIKE, "num_key_value_heads": 1, "head_dim": 16})
        return tf.GemmaForCausalLM(cfg).eval()
    if family == "t5":
        cfg = tf.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                          decoder_start_token_id=0, pad_token_id=0)
        return tf.T5ForConditionalGeneration(cfg).eval()
    if family == "vit":
        cfg = tf.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64)
        return tf.ViTModel(cfg).eval()
    if family == "deit":
        cfg = tf.DeiTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64)
        return tf.DeiTModel(cfg).eval()
    raise ValueError(family)


_BERT = {"self": ("encoder.layer.{}.attention.self", "encoder.layer.{}.attention.output.dense",
                  "encoder.layer.{}.attention.self.value")}
_LLAMA = {"self": ("model.layers.{}.self_attn", "model.layers.{}.self_attn.o_proj", "model.layers.{}.self_attn.v_proj")}
_VIT = {"self": ("layers.{}.attention", "layers.{}.attention.o_proj", "layers.{}.attention.v_proj")}


def _bart(prefix: str, attn: str) -> tuple[str, str, str]:
    base = f"model.{prefix}.layers.{{}}.{attn}"
    return base, base + ".out_proj", base + ".v_proj"


def _t5(prefix: str, sub: str) -> tuple[str, str, str]:
    base = f"{prefix}.block.{{}}.layer.{sub}"
    return base, base + ".o", base + ".v"


#: Per family and stack: (attention module, its output projection, the layer whose output is the value).
NAMES = {
    "minilm": _BERT,
    "bert": _BERT,
    "roberta": _BERT,
    "distilbert": {"self": ("transformer.layer.{}.attention", "transformer.layer.{}.attention.out_lin",
                            "transformer.layer.{}.attention.v_lin")},
    "gpt2": {"self": ("transformer.h.{}.attn", "transformer.h.{}.attn.c_proj", "transformer.h.{}.attn.c_attn")},
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gemma": _LLAMA,
    "bart": {"encoder": _bart("encoder", "self_attn"), "decoder": _bart("decoder", "self_attn"),
             "cross": _bart("decoder", "encoder_attn")},
    "t5": {"encoder": _t5("encoder", "0.SelfAttention"), "decoder": _t5("decoder", "0.SelfAttention"),
           "cross": _t5("decoder", "1.EncDecAttention")},
    "vit": _VIT,
    "deit": _VIT,
}


def _linear(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The test's own reading of a projection: ``(weight [out, in], bias)``; GPT-2's Conv1D stores ``[in, out]``."""
    if isinstance(module, tf.pytorch_utils.Conv1D):
        return module.weight.t(), module.bias
    return module.weight, module.bias


def _value_of(family: str, out: torch.Tensor) -> torch.Tensor:
    if family == "gpt2":  # c_attn computes query, key and value at once
        return out.split(out.shape[-1] // 3, dim=-1)[2]
    return out


def _to_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, T, heads * d]`` -> ``[B, heads, T, d]``."""
    return x.view(*x.shape[:2], heads, -1).transpose(1, 2)


def _run_hooked(family: str, model, inspector: AttentionInspector, batch: Batch, layers: int = 2):
    seen: dict[tuple[str, int, str], torch.Tensor] = {}
    handles = []
    for stack, (_, proj, value) in NAMES[family].items():
        for layer in range(layers):
            def keep_proj(mod, args, out, key=(stack, layer)):
                seen[key + ("in",)] = args[0].detach()
                seen[key + ("out",)] = out.detach()

            def keep_value(mod, args, out, key=(stack, layer)):
                seen[key + ("value",)] = _value_of(family, out).detach()

            handles.append(model.get_submodule(proj.format(layer)).register_forward_hook(keep_proj))
            handles.append(model.get_submodule(value.format(layer)).register_forward_hook(keep_value))
    recorders = [ValuesRecorder(), HeadOutputsRecorder(), ContributionsRecorder(model)]
    try:
        inspector.run(batch, recorders)
    finally:
        for h in handles:
            h.remove()
    return CaptureResult.collect(recorders), seen


FAMILIES = ["bert", "roberta", "distilbert", "gpt2", "llama", "mistral", "qwen2", "gemma", "bart", "t5", "vit", "deit"]


def _check_family(family: str, model, inspector: AttentionInspector, batch: Batch, layers: int = 2) -> None:
    captured, seen = _run_hooked(family, model, inspector, batch, layers)
    assert set(captured.records) == {(stack, layer) for stack in NAMES[family] for layer in range(layers)}
    for stack, (attn, proj_name, _) in NAMES[family].items():
        for layer in range(layers):
            rec = captured[(stack, layer)]
            proj = model.get_submodule(proj_name.format(layer))
            assert projection_module(model, model.get_submodule(attn.format(layer))) is proj
            weight, bias = _linear(proj)
            heads = rec["head_outputs"].shape[1]
            bias = 0 if bias is None else bias
            # the heads' contributions plus the output bias are the projection's real output
            total = rec["contributions"].sum(1) + bias
            real = seen[(stack, layer, "out")]
            assert total.shape == real.shape
            assert torch.allclose(total, real, atol=1e-5), (family, stack, layer, (total - real).abs().max())
            # each head's output is the projection's input, cut into heads
            assert torch.allclose(rec["head_outputs"], _to_heads(seen[(stack, layer, "in")], heads), atol=1e-6)
            # values: the value layer's output per head, key/value heads repeated for grouped-query attention
            value_out = seen[(stack, layer, "value")]
            d = rec["values"].shape[-1]
            values = _to_heads(value_out, value_out.shape[-1] // d)
            values = values.repeat_interleave(heads // values.shape[1], dim=1)
            assert torch.allclose(rec["values"], values, atol=1e-6)
            # ||f_h(x_j)|| from the value layer's output and the head's columns of the projection
            f = torch.stack([values[:, h] @ weight[:, h * d:(h + 1) * d].T for h in range(heads)], 1)
            assert torch.allclose(rec["norms"], f.norm(dim=-1), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_contributions_values_and_head_outputs_match_the_models_modules(family, tiny_tokenizer):
    model = _build(family)
    if family in ("vit", "deit"):
        inspector = AttentionInspector(model, None)
        lead = ["[CLS]"] + (["[DIST]"] if family == "deit" else [])  # a 16 x 16 image in 4 x 4 patches
        units = lead + [f"p({r},{c})" for r in range(4) for c in range(4)]
        kinds = ["class"] + (["distillation"] if family == "deit" else []) + ["patch"] * 16
        batch = Batch.from_units({"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))},
                                 [units, units], [kinds, kinds])
    else:
        inspector = AttentionInspector(model, tiny_tokenizer)
        batch = inspector.encode(TEXTS, TARGETS if family in ("bart", "t5") else None)
    _check_family(family, model, inspector, batch)


def test_minilm_contributions_match_its_modules(inspector):
    batch = inspector.encode(TEXTS)
    _check_family("minilm", inspector.model, inspector, batch, layers=6)


# ------------------------------------------------------------------ the norm measure
def _independent_norm(model, family: str, text: str, tokenizer) -> torch.Tensor:
    """``alpha_ij ||(x_j W_V + b_V)_h W_O^h||`` from the model's eager weights, its value and output weights and
    each layer's input captured by a hook: ``[layers, heads, T, T]`` for one unpadded text."""
    attn_fmt, proj_fmt, value_fmt = NAMES[family]["self"]
    layers = model.config.num_hidden_layers
    inputs: dict[int, torch.Tensor] = {}
    handles = []
    for layer in range(layers):
        def keep(mod, args, kwargs, layer=layer):
            inputs[layer] = (args[0] if args else kwargs["hidden_states"]).detach()

        handles.append(model.get_submodule(attn_fmt.format(layer)).register_forward_pre_hook(keep, with_kwargs=True))
    enc = tokenizer(text, return_tensors="pt")
    try:
        with use_implementation(model, "eager"), torch.no_grad():
            out = model(**enc, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    maps = []
    for layer in range(layers):
        alpha = out.attentions[layer][0]  # [H, T, T]
        heads = alpha.shape[0]
        x = inputs[layer][0]  # [T, hidden]
        value_layer = model.get_submodule(value_fmt.format(layer))
        if family == "gpt2":
            w, b = value_layer.weight, value_layer.bias  # Conv1D: [in, 3 * hidden]
            hidden = w.shape[0]
            v = x @ w[:, 2 * hidden:] + b[2 * hidden:]
        else:
            v = x @ value_layer.weight.T + value_layer.bias
        w_o, _ = _linear(model.get_submodule(proj_fmt.format(layer)))
        d = v.shape[-1] // heads
        norms = torch.stack([(v[:, h * d:(h + 1) * d] @ w_o[:, h * d:(h + 1) * d].T).norm(dim=-1) for h in range(heads)])
        maps.append(alpha * norms[:, None, :])
    return torch.stack(maps)


@pytest.mark.parametrize("family", ["minilm", "gpt2"])
def test_norm_measure_equals_an_independent_computation(family, inspector, tiny_tokenizer):
    if family == "minilm":
        insp = inspector
    else:
        insp = AttentionInspector(tiny_models.build("gpt2"), tiny_tokenizer)
    results = insp(TEXTS, measures=["weights", "norm"])
    for text, r in zip(TEXTS, results):
        expected = _independent_norm(insp.model, family, text, insp.tokenizer)
        got = r.measure("norm")
        assert got.shape == expected.shape == r.attentions.shape
        assert torch.allclose(got, expected, atol=1e-5), (family, (got - expected).abs().max())
        assert torch.equal(r.measure("weights"), r.attentions)
        assert set(r.measures) == {"norm"}
    for plain, r in zip(insp(TEXTS), results):  # the measures do not change the weights
        assert torch.equal(plain.attentions, r.attentions)


def test_norm_measure_keeps_no_per_query_hidden_vectors(inspector):
    """The norm measure keeps ``[B, H, T]`` norms beside the weights, never ``[heads, T, T, hidden]`` or the
    ``[B, H, T, hidden]`` contributions, and the memory estimate counts exactly those norms."""
    request = CaptureRequest(measures=("norm",), layers=(0, 2), heads=(1, 3, 5))
    batch = inspector.encode(TEXTS)
    recorders = request.recorders(inspector.model)
    inspector.run(batch, recorders)
    captured = CaptureResult.collect(recorders)
    b, t = batch.size, int(batch.inputs["attention_mask"].shape[-1])
    assert sorted(captured.records) == [("self", 0), ("self", 2)]
    for rec in captured.records.values():
        assert {k: tuple(v.shape) for k, v in rec.items()} == {"weights": (b, 3, t, t), "norms": (b, 3, t)}
    plain = inspector.batch_estimate(batch, [0, 2], [1, 3, 5])
    with_norm = inspector.batch_estimate(batch, [0, 2], [1, 3, 5], request)
    assert with_norm.kept - plain.kept == 2 * 2 * b * 3 * t * 4
    r = inspector(TEXTS[0], request=request)
    assert r.layer_ids == [0, 2] and r.head_ids == [1, 3, 5] and r.measure("norm").shape == r.attentions.shape


def test_measure_errors_say_what_to_pass(inspector):
    r = inspector(TEXTS[1])
    with pytest.raises(InputError, match=r"pass measures=\['norm'\]"):
        r.measure("norm")
    with pytest.raises(InputError, match="valid measures: weights, norm"):
        r.measure("bogus")
    with pytest.raises(InputError, match="valid measures: weights, norm"):
        inspector(TEXTS[1], measures=["bogus"])
    with pytest.raises(InputError, match="valid records: weights, values, head_outputs, contributions"):
        CaptureRequest(record=("weights", "attn"))
    with pytest.raises(InputError, match="not both"):
        inspector(TEXTS[1], measures=["norm"], request=CaptureRequest())


def test_measures_are_saved_and_loaded(tmp_path, inspector):
    from safetensors import safe_open

    r = inspector(TEXTS[0], measures=["norm"], layers=[1], heads=[2, 4])
    path = r.save(tmp_path / "r.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["attentions", "measure.norm"]
    back = type(r).load(path)
    assert torch.equal(back.measure("norm"), r.measure("norm")) and back.head_ids == [2, 4]
    old = inspector(TEXTS[0]).save(tmp_path / "old.safetensors")  # a file without measures loads with none
    assert type(r).load(old).measures == {}


def test_unknown_architecture_and_eager_fallback_are_capture_errors(tiny_model, tiny_tokenizer):
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = torch.nn.Linear(4, 4)

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = torch.nn.Module()
            self.block.attn = Odd()

    model = Holder()
    with pytest.raises(CaptureError, match=r"cannot find the output projection of attention module 'block\.attn' \(Odd\)"):
        output_projection(model, model.block.attn)
    deberta = AttentionInspector(tiny_model("deberta"), tiny_tokenizer)  # falls back to eager output_attentions
    with pytest.raises(CaptureError, match="does not dispatch through transformers' attention interface"):
        deberta(TEXTS[0], measures=["norm"])


def test_t5_weights_include_the_relative_position_bias(tiny_tokenizer):
    """T5 passes its relative position bias beside the mask: the captured weights of all three stacks equal the
    eager attention of the same model (without the bias they differ by up to 0.14 on this tiny model)."""
    model = _build("t5")
    results = AttentionInspector(model, tiny_tokenizer)(TEXTS[:2], TARGETS[:2])
    model.set_attn_implementation("eager")
    try:
        for text, target, r in zip(TEXTS, TARGETS, results):
            enc, dec = tiny_tokenizer(text, return_tensors="pt"), tiny_tokenizer(text_target=target, return_tensors="pt")
            with torch.no_grad():
                out = model(**enc, decoder_input_ids=dec.input_ids, output_attentions=True)
            for ours, theirs in [(r.attentions, out.encoder_attentions), (r.decoder_attentions, out.decoder_attentions),
                                 (r.cross_attentions, out.cross_attentions)]:
                theirs = torch.cat(theirs)
                assert ours.shape == theirs.shape
                assert torch.allclose(ours, theirs, atol=1e-6), (ours - theirs).abs().max()
    finally:
        model.set_attn_implementation("sdpa")


def test_record_returns_one_result_keyed_by_stack_and_layer(inspector):
    """``inspector.record`` runs a request once: records keyed by (stack, layer), the weights equal to what
    ``inspector(texts)`` returns (padding cut), and each head's output equal to its weights times its values."""
    batch = inspector.encode(TEXTS)
    captured = inspector.record(batch, CaptureRequest(record=("weights", "values", "head_outputs"), layers=(1, 3)))
    assert sorted(captured.records) == [("self", 1), ("self", 3)]
    results = inspector(TEXTS, layers=[1, 3])
    for b, (r, n) in enumerate(zip(results, batch.lengths)):
        for i, layer in enumerate((1, 3)):
            rec = captured[("self", layer)]
            torch.testing.assert_close(rec["weights"][b, :, :n, :n], r.attentions[i], rtol=0, atol=0)
            torch.testing.assert_close(rec["head_outputs"][b, :, :n], rec["weights"][b, :, :n] @ rec["values"][b], atol=1e-5, rtol=1e-5)
