"""Capture equals the model's own eager attention on every family, with exact masks."""

import pytest
import torch

from hf_attn_inspect import AttentionInspector, CaptureError, InputError
from hf_attn_inspect.capture.interface import use_implementation
from hf_attn_inspect.capture.recorders import Recorder
from conftest import SENTENCES

FAMILIES = ["bert", "sdpa_bert", "gpt2", "llama", "bart", "deberta"]
TARGETS = ["Le chat.", "Bonjour le monde entier", "x", "Une phrase un peu plus longue que les autres ici.",
           "Oui", "Est-ce rembourré ?", "Le renard.", "Court."]


def eager_alone(model, tokenizer, text, target=None):
    """Independent reference: the model's own eager output_attentions on one unpadded text."""
    enc = tokenizer(text, return_tensors="pt")
    kwargs = {}
    if target is not None:
        kwargs["decoder_input_ids"] = tokenizer(text_target=target, return_tensors="pt").input_ids
    with use_implementation(model, "eager"), torch.no_grad():
        out = model(**enc, **kwargs, output_attentions=True)
    if target is None:
        return {"self": torch.stack([a[0] for a in out.attentions])}
    return {
        "self": torch.stack([a[0] for a in out.encoder_attentions]),
        "decoder": torch.stack([a[0] for a in out.decoder_attentions]),
        "cross": torch.stack([a[0] for a in out.cross_attentions]),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_equals_eager_alone(family, tiny_model, tiny_tokenizer):
    model = tiny_model(family)
    before = model.config._attn_implementation
    inspector = AttentionInspector(model, tiny_tokenizer)
    pairs = TARGETS if family == "bart" else None
    results = inspector(SENTENCES, pairs)
    assert model.config._attn_implementation == before
    for i, (text, r) in enumerate(zip(SENTENCES, results)):
        ref = eager_alone(model, tiny_tokenizer, text, None if pairs is None else pairs[i])
        for which, expected in ref.items():
            got = r.stack(which)[0]
            assert got.shape == expected.shape
            assert torch.allclose(got, expected, atol=1e-6), (family, which, (got - expected).abs().max())
        w = r.attentions
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5)
        if r.is_causal:
            assert (w.triu(1) == 0).all()
        if family == "bart":
            assert (r.decoder_attentions.triu(1) == 0).all()
    assert results[0].is_causal == (family in ("gpt2", "llama"))


def test_padding_keys_are_exactly_zero_inside_the_batch(tiny_model, tiny_tokenizer):
    from hf_attn_inspect.capture.recorders import WeightsRecorder

    inspector = AttentionInspector(tiny_model("llama"), tiny_tokenizer)
    batch = inspector.encode(SENTENCES)
    probe = WeightsRecorder()
    inspector.run(batch, probe)
    w = probe.weights["self"][0]  # [B, H, T, T]
    valid = batch.valid
    for b, n in enumerate(batch.lengths):
        assert (w[b, :, :n, n:] == 0).all()
        assert n == int(valid[b].sum())


def test_default_model_padded_batch_of_8_equals_eager_alone(inspector):
    from transformers import AutoModel

    from hf_attn_inspect import default_model_path

    eager = AutoModel.from_pretrained(default_model_path(), attn_implementation="eager").eval()
    results = inspector(SENTENCES)
    assert inspector.model.config._attn_implementation == "sdpa"
    for text, r in zip(SENTENCES, results):
        ref = eager_alone(eager, inspector.tokenizer, text)["self"]
        assert torch.allclose(r.attentions, ref, atol=1e-5)
    assert results[0].tokens == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]
    assert results[0].special_tokens_mask[0] and results[0].special_tokens_mask[-1]


class _Boom(RuntimeError):
    pass


class _FailingProbe(Recorder):
    """Raises inside the forward pass, at the second attention layer, after the first has run."""

    needs_weights = True

    def __init__(self):
        self.seen = 0

    def record(self, call):
        self.seen += 1
        if self.seen == 2:
            raise _Boom("planted failure inside the capture")


def test_sdpa_model_restored_even_on_error(tiny_model, tiny_tokenizer):
    model = tiny_model("sdpa_bert")
    inspector = AttentionInspector(model, tiny_tokenizer)
    batch = inspector.encode(["fine", "another text"])
    inputs = {k: v for k, v in batch.inputs.items()}
    with torch.no_grad():
        before = model(**inputs).last_hidden_state
    probe = _FailingProbe()
    with pytest.raises(_Boom):
        inspector.run(batch, probe)
    assert probe.seen == 2, "the error must be raised inside the capture, mid-forward"
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():  # the model runs its own sdpa again, outside any capture, with the same output
        after = model(**inputs).last_hidden_state
    assert torch.equal(before, after)
    r = inspector("full attentions please")
    assert r.attentions.shape[:2] == (2, 4)


def test_sentence_pair_segments_and_subset(inspector):
    r = inspector("The cat sat.", "It was tired.", layers=[1, 3], heads=[0, 5])
    assert r.layer_ids == [1, 3] and r.head_ids == [0, 5]
    assert r.attentions.shape[:2] == (2, 2)
    full = inspector("The cat sat.", "It was tired.")
    assert torch.equal(r.head(3, 5), full.head(3, 5))
    assert set(s for s in r.segment_ids if s is not None) == {0, 1}
    with pytest.raises(InputError, match="valid layers"):
        r.head(0, 0)


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_blank_text_is_refused(inspector, bad):
    with pytest.raises(InputError, match="empty"):
        inspector(bad)


def test_out_of_range_indices_list_valid_range(inspector):
    with pytest.raises(InputError, match=r"valid layers: 0\.\.5"):
        inspector("x", layers=[6])
    with pytest.raises(InputError, match=r"valid heads: 0\.\.11"):
        inspector("x", heads=[12])


def test_truncation_warns_or_refuses(inspector):
    from hf_attn_inspect import TruncationWarning

    long = "word " * 40
    with pytest.warns(TruncationWarning):
        r = inspector(long, max_length=16)
    assert r.seq_len == 16
    with pytest.raises(InputError, match="more than the maximum"):
        inspector(long, max_length=16, truncation=False)


def test_model_without_attention_is_a_clear_error(tiny_tokenizer):
    class NoAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"is_encoder_decoder": False, "_name_or_path": "none",
                                         "num_hidden_layers": 1, "num_attention_heads": 1})()
            self.lin = torch.nn.Embedding(30522, 4)

        def forward(self, input_ids=None, output_attentions=False, **kw):
            return type("O", (), {"attentions": ()})()

    with pytest.raises(CaptureError, match="no attention"):
        AttentionInspector(NoAttention(), tiny_tokenizer)("hello")


def test_save_and_load_round_trip(tmp_path, tiny_model, tiny_tokenizer):
    r = AttentionInspector(tiny_model("bart"), tiny_tokenizer)("A source text.", "A target")
    path = r.save(tmp_path / "r.safetensors")
    back = type(r).load(path)
    assert back.tokens == r.tokens and back.decoder_tokens == r.decoder_tokens
    assert torch.equal(back.attentions, r.attentions) and torch.equal(back.cross_attentions, r.cross_attentions)
    assert [p.name for p in tmp_path.iterdir()] == ["r.safetensors"]
    assert b"pickle" not in path.read_bytes()[:200]


def test_sliding_window_mask_is_honoured(tiny_tokenizer):
    """Mistral with a 4-token sliding window: keys further back than the window get exactly 0."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.MistralConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                           max_position_embeddings=256, pad_token_id=0)
    model = tf.MistralForCausalLM(cfg).eval()
    inspector = AttentionInspector(model, tiny_tokenizer)
    results = inspector(SENTENCES[:4])
    for text, r in zip(SENTENCES[:4], results):
        ref = eager_alone(model, tiny_tokenizer, text)["self"]
        assert torch.allclose(r.attentions, ref, atol=1e-6)
        t = r.seq_len
        i, j = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
        outside = (j > i) | (i - j >= 4)
        assert (r.attentions[..., outside] == 0).all()
        assert (r.attentions[..., ~outside] > 0).all()


def test_a_recorder_needing_weights_beside_one_that_keeps_none_is_a_capture_error(inspector):
    """The streamed-statistics recorder computes attention without weights: a weights recorder in the same run
    gets a clear CaptureError naming both, not a TypeError from inside the model."""
    from hf_attn_inspect import CaptureError
    from hf_attn_inspect.capture.recorders import WeightsRecorder
    from hf_attn_inspect.stats.streaming import StreamingStatsRecorder

    batch = inspector.encode(["The cat sat on the mat."])
    with pytest.raises(CaptureError, match="StreamingStatsRecorder computes attention without keeping its weights, "
                                           "which WeightsRecorder needs"):
        inspector.run(batch, [StreamingStatsRecorder(batch.stack_masks()), WeightsRecorder()])
