"""The reference core against torch's own scaled_dot_product_attention, on randomised shapes and masks."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_attn_inspect import InputError
from hf_attn_inspect.core.kernels import fast_attention_with_weights, repeat_kv
from hf_attn_inspect.core.kernels import scaled_dot_product_attention_with_weights as sdpaw
from hf_attn_inspect.core.masks import mask_to_keep
from hf_attn_inspect.core.tokens import clean_token, is_punctuation, punctuation_mask, punctuation_table


@st.composite
def problems(draw):
    batch = draw(st.integers(1, 3))
    kv_heads = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    t = draw(st.integers(1, 9))
    s = draw(st.integers(1, 9))
    d = draw(st.sampled_from([1, 4, 8, 16]))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["none", "bool", "int", "additive", "causal"]))
    return batch, kv_heads, groups, t, s, d, seed, kind


@settings(max_examples=150, deadline=None)
@given(problems())
def test_matches_torch_sdpa(p):
    batch, kv_heads, groups, t, s, d, seed, kind = p
    g = torch.Generator().manual_seed(seed)
    h = kv_heads * groups
    q = torch.randn(batch, h, t, d, generator=g)
    k = torch.randn(batch, kv_heads, s, d, generator=g)
    v = torch.randn(batch, kv_heads, s, d, generator=g)
    keep = torch.rand(batch, 1, t, s, generator=g) > 0.3
    keep[..., 0] = True  # at least one key per row: torch gives NaN on fully masked rows
    mask, ref_mask, causal = None, None, False
    if kind == "bool":
        mask = ref_mask = keep
    elif kind == "int":
        mask, ref_mask = keep.long(), keep
    elif kind == "additive":
        bias = torch.randn(batch, 1, t, s, generator=g)
        mask = torch.where(keep, bias, torch.tensor(float("-inf")))
        ref_mask = mask
    elif kind == "causal":
        causal = True
    out, w = sdpaw(q, k, v, mask, is_causal=causal)
    kk, vv = repeat_kv(k, h), repeat_kv(v, h)
    ref = F.scaled_dot_product_attention(q, kk, vv, attn_mask=ref_mask, is_causal=causal)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    sums = w.sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    if kind in ("bool", "int", "additive"):
        assert (w[~keep.expand_as(w)] == 0).all()
    if causal:
        assert (w.triu(1) == 0).all()


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    out, w = sdpaw(q, k, v, mask)
    assert not torch.isnan(w).any() and not torch.isnan(out).any()
    assert (w[:, :, 1] == 0).all() and (out[:, :, 1] == 0).all()
    assert torch.allclose(w[:, :, 0].sum(-1), torch.ones(1, 2))


def test_dtype_min_additive_mask_counts_as_masked():
    mask = torch.tensor([[0.0, torch.finfo(torch.float32).min, 0.0]])
    keep, bias = mask_to_keep(mask)
    assert keep.tolist() == [[True, False, True]] and bias is None


def test_half_precision_softmax_in_float32():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    out16, w16 = sdpaw(q.bfloat16(), k.bfloat16(), v.bfloat16())
    out32, w32 = sdpaw(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float())
    assert w16.dtype == torch.float32 and out16.dtype == torch.bfloat16
    assert torch.allclose(w16, w32, atol=1e-6)


def test_explicit_scale_and_chapter_example():
    q = k = v = torch.eye(3)[None]
    _, w = sdpaw(q, k, v, scale=1.0)
    e = math.e
    assert w[0, 0, 0].item() == pytest.approx(e / (e + 2))


def test_uneven_gqa_is_refused():
    with pytest.raises(InputError, match="evenly"):
        repeat_kv(torch.randn(1, 3, 2, 4), 4)


# ------------------------------------------------------------------ mask conventions
def test_float_zero_one_mask_is_a_keep_mask():
    """A float mask of only 0s and 1s with at least one 1 means keep (1) / masked (0), not an additive bias."""
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    keep, bias = mask_to_keep(mask)
    assert keep.dtype == torch.bool and keep.tolist() == [[True, False, True], [False, True, False]]
    assert bias is None
    # used as attention mask: the 0 keys get exactly zero weight, like the boolean mask
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 1, 2, 4, generator=g), torch.randn(1, 1, 3, 4, generator=g), torch.randn(1, 1, 3, 4, generator=g)
    _, w_float = sdpaw(q, k, v, mask)
    _, w_bool = sdpaw(q, k, v, mask.bool())
    assert torch.equal(w_float, w_bool) and (w_float[0, 0][~mask.bool()] == 0).all()


@pytest.mark.parametrize(
    "mask",
    [
        torch.zeros(2, 3),  # only 0s, no 1: "add nothing", every key kept
        torch.tensor([[0.0, 1.0, 2.0]]),  # a 2 makes it a bias
        torch.tensor([[0.0, 1.0, -0.5]]),
        torch.tensor([[1.0, 1.0, 0.25]]),
    ],
)
def test_other_float_masks_are_additive(mask):
    keep, bias = mask_to_keep(mask)
    assert keep.all()  # nothing is at the dtype minimum, so nothing is masked
    if bool((mask != 0).any()):
        assert bias is not None and torch.equal(bias, mask)  # added to the scores as is
    else:
        assert bias is None
    q, k, v = torch.randn(1, 1, mask.shape[0], 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    _, w = sdpaw(q, k, v, mask, scale=1.0)
    want = torch.softmax(q[0, 0] @ k[0, 0].T + mask, -1)
    torch.testing.assert_close(w[0, 0], want)


def test_additive_mask_with_minimum_and_bias_splits_in_two():
    low = torch.finfo(torch.float16).min
    mask = torch.tensor([[0.5, low, 0.0, float("-inf")]], dtype=torch.float16)
    keep, bias = mask_to_keep(mask)
    assert keep.tolist() == [[True, False, True, False]]
    assert bias.tolist() == [[0.5, 0.0, 0.0, 0.0]]


def test_fast_attention_with_weights_equals_reference():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, 5:] = False
    additive = torch.zeros(2, 1, 7, 7).masked_fill(~valid[:, None, None, :], torch.finfo(torch.float32).min)
    scratch = torch.empty(2, 3, 7, 7)
    out, w = fast_attention_with_weights(q, k, v, additive, 0.3, scratch)
    ref_out, ref_w = sdpaw(q, k, v, additive, scale=0.3)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
    assert w.data_ptr() == scratch.data_ptr()  # the buffer was reused
    assert (w[1, :, :, 5:] == 0).all()
    out2, w2 = fast_attention_with_weights(q, k, v, None, None)  # default scale 1/sqrt(d), no mask
    torch.testing.assert_close(w2, sdpaw(q, k, v)[1], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ token rules (core/tokens.py)
@pytest.mark.parametrize(
    "token, shown",
    [("Ġcat", " cat"), ("▁the", " the"), ("Ċ", "\\n"), ("ĉ", "\\t"), ("ĠĠ", "  "), ("[CLS]", "[CLS]"),
     ("##ing", "##ing"), ("", "")],
)
def test_clean_token_makes_markers_visible(token, shown):
    assert clean_token(token) == shown


def test_clean_token_decodes_byte_level_characters():
    """GPT-2 style tokens of non-ASCII text read as the text (checked against GPT-2's byte-to-character table
    written out independently); a token holding part of a character's bytes, and accented letters of other
    vocabularies, are left as they are."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    table = {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}

    def byte_level(text: str) -> str:
        return "".join(table[b] for b in text.encode("utf-8"))

    for text in ("我", " 我们", "’", " “quoted”", "naïve", "\n"):
        assert clean_token(byte_level(text)) == text.replace("\n", "\\n")
    assert clean_token(byte_level("我")[:2]) == byte_level("我")[:2]  # 2 of its 3 bytes: not a character
    for kept in ("é", "##é", "▁café", "日本"):  # WordPiece / SentencePiece / plain: unchanged
        assert clean_token(kept) == kept.replace("▁", " ")
    assert is_punctuation(byte_level("。")) and is_punctuation(byte_level(" —"))


@pytest.mark.parametrize(
    "token, punct",
    [
        (".", True), (",", True), ("...", True), ("!?", True), ("#", True), ("«", True), ("—", True), ("。", True),
        ("##.", True),  # WordPiece continuation of a punctuation mark
        ("Ġ.", True), ("▁,", True), ("Ġ\"", True),  # byte-level / SentencePiece space marker removed
        ("a", False), ("a.", False), ("3.14", False), ("[SEP]", False), ("</s>", False),
        ("$", False), ("+", False), ("=", False),  # symbols (S*), not punctuation (P*)
        ("", False), ("Ġ", False), ("▁", False), ("##", False),  # blank once markers are removed
    ],
)
def test_is_punctuation_rule(token, punct):
    assert is_punctuation(token) is punct


def test_punctuation_mask_is_the_rule_per_token():
    tokens = ["[CLS]", "Hello", "Ġ,", "world", "##!", "[SEP]"]
    mask = punctuation_mask(tokens)
    assert mask.dtype == torch.bool and mask.tolist() == [False, False, True, False, True, False]
    empty = punctuation_mask([])
    assert empty.dtype == torch.bool and empty.shape == (0,)


class _Vocab:
    """A minimal tokenizer (the core.tokens.Tokenizer protocol) that counts vocabulary look-ups."""

    def __init__(self, tokens):
        self.tokens = tokens
        self.lookups = 0

    def __len__(self):
        return len(self.tokens)

    def convert_ids_to_tokens(self, ids):
        self.lookups += 1
        return [self.tokens[i] for i in ids]


def test_punctuation_table_is_the_rule_per_id_and_cached():
    vocab = _Vocab(["[PAD]", ".", "the", "##,", "Ġ!", None, "a-b", "-"])
    table = punctuation_table(vocab)
    assert table.dtype == torch.bool
    assert table.tolist() == [False, True, False, True, True, False, False, True]  # None (no token) is not punctuation
    assert punctuation_table(vocab) is table and vocab.lookups == 1  # computed once per tokenizer


def test_punctuation_table_agrees_with_the_mask_on_a_real_tokenizer(tiny_tokenizer):
    text = "Hello, world! (A test); it's 3.14 -- ok?"
    ids = tiny_tokenizer(text)["input_ids"]
    table = punctuation_table(tiny_tokenizer)
    assert len(table) == len(tiny_tokenizer)
    by_id = table[torch.tensor(ids)]
    by_token = punctuation_mask(tiny_tokenizer.convert_ids_to_tokens(ids))
    assert torch.equal(by_id, by_token) and by_id.sum() >= 6  # , ! ( ) ; ' . - - ? are there


# ------------------------------------------------------------------ stacks
def test_stack_rules_of_each_model_kind():
    from hf_attn_inspect.core import stacks as sk

    assert sk.model_stacks(False) == ("self",) and sk.model_stacks(True) == ("encoder", "decoder", "cross")
    # cross attention: decoder tokens ask, encoder tokens answer; every other stack attends to itself
    assert [(sk.query_stack(s), sk.key_stack(s)) for s in sk.STACKS] == [
        ("self", "self"), ("encoder", "encoder"), ("decoder", "decoder"), ("decoder", "encoder")]
    assert [s for s in sk.STACKS if sk.is_self_attention(s)] == list(sk.SELF_STACKS)
    # the user's "self" is the encoder of an encoder-decoder model, and back
    assert sk.model_stack("self", True) == "encoder" and sk.model_stack("self", False) == "self"
    assert sk.model_stack("cross", True) == "cross"
    assert [sk.result_stack(sk.model_stack(w, True)) for w in sk.ATTENTIONS] == list(sk.ATTENTIONS)
    assert sk.main_stack_of({"encoder": 1, "decoder": 1, "cross": 1}) == "encoder" == sk.main_stack(True)
    assert sk.main_stack_of({"self": 1}) == "self" == sk.main_stack(False)
    assert sk.stack_aliases("self") == ("self", "encoder") and sk.stack_aliases("decoder") == ("decoder",)


def test_unknown_stack_is_one_clear_input_error():
    from hf_attn_inspect.core.stacks import ATTENTIONS, check_stack

    assert check_stack("cross") == "cross"
    with pytest.raises(InputError, match=r"^unknown attention 'encoder'; choose one of self, decoder, cross$"):
        check_stack("encoder", ATTENTIONS, "attention")
    with pytest.raises(InputError, match=r"^unknown stack 'dec'; choose one of self, encoder, decoder, cross$"):
        check_stack("dec")
