"""Units with a kind (issue 19 item 8): text batches take their kinds from the tokenizer, image batches are
built with ``Batch.from_units`` from pixels plus the units the caller computed, and both run through the same
capture path."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from hf_attn_inspect import AttentionInspector, InputError
from hf_attn_inspect.capture.inputs import PAD, UNIT_KINDS, Batch
from hf_attn_inspect.capture.interface import use_implementation
from hf_attn_inspect.capture.recorders import WeightsRecorder

TEXTS = ["The cat sat on the mat.", "Hi", "A longer sentence, with punctuation!"]
VISION = {"image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 64}


def test_text_kinds_are_the_tokenizers_special_tokens_mask(inspector):
    batch = inspector.encode(TEXTS)
    enc = inspector.tokenizer(TEXTS, padding=True, return_special_tokens_mask=True, return_tensors="pt")
    valid = enc["attention_mask"].bool()
    assert not valid.all()  # the batch has padding
    expected = torch.where(enc["special_tokens_mask"].bool(), 1, 0).masked_fill(~valid, PAD).to(torch.int8)
    assert batch.kinds.dtype == torch.int8 and torch.equal(batch.kinds, expected)
    special_ids = set(inspector.tokenizer.all_special_ids)
    is_special = torch.tensor([[i in special_ids for i in row] for row in enc["input_ids"].tolist()]) & valid
    assert torch.equal(batch.kind_mask("special"), is_special)
    assert torch.equal(batch.kind_mask("token"), valid & ~is_special)
    assert not batch.kind_mask("patch").any()
    # text batches are unchanged: same tensors, same masks, tokens from the tokenizer
    assert set(batch.inputs) == set(enc) - {"special_tokens_mask"}
    for k in batch.inputs:
        assert torch.equal(batch.inputs[k], enc[k])
    assert batch.unit_kinds is None and batch.tokens(1) == enc.tokens(1)[: int(valid[1].sum())]
    picked = batch.select([1, 0])
    assert torch.equal(picked.kinds, expected[[1, 0], : int(valid[[0, 1]].sum(-1).max())])


def _vision(family: str) -> tuple[torch.nn.Module, int]:
    """A tiny random vision model and its number of leading (non-patch) units."""
    torch.manual_seed(0)
    if family == "vit":
        return tf.ViTModel(tf.ViTConfig(**VISION)).eval(), 1
    if family == "deit":
        return tf.DeiTModel(tf.DeiTConfig(**VISION)).eval(), 2
    cfg = tf.Dinov2WithRegistersConfig(**VISION, num_register_tokens=2)
    return tf.Dinov2WithRegistersModel(cfg).eval(), 1 + cfg.num_register_tokens


def _units(family: str, config, rows: int) -> tuple[list[list[str]], list[list[str]]]:
    """Unit labels and kinds from the config: [CLS], DeiT's distillation token or DINOv2's registers, then the
    patches in row-major grid order labelled ``p(row,col)``."""
    side = config.image_size // config.patch_size
    labels, kinds = ["[CLS]"], ["class"]
    if family == "deit":
        labels, kinds = labels + ["[DIST]"], kinds + ["distillation"]
    registers = getattr(config, "num_register_tokens", 0)
    labels += [f"[REG{i}]" for i in range(registers)]
    kinds += ["register"] * registers
    labels += [f"p({r},{c})" for r in range(side) for c in range(side)]
    kinds += ["patch"] * side * side
    return [list(labels) for _ in range(rows)], [list(kinds) for _ in range(rows)]


@pytest.mark.parametrize("family", ["vit", "deit", "dinov2_registers"])
def test_image_batch_from_units_runs_through_the_capture_path(family):
    model, lead = _vision(family)
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels, kinds = _units(family, model.config, 2)
    batch = Batch.from_units({"pixel_values": pixels}, labels, kinds)
    t = lead + 16
    assert set(batch.inputs) == {"pixel_values"}  # no attention_mask goes to the model
    assert batch.size == 2 and batch.width == t and batch.lengths == [t, t] and batch.valid.all()
    assert batch.tokens(0)[:lead + 2] == labels[0][:lead] + ["p(0,0)", "p(0,1)"] and batch.tokens(1)[-1] == "p(3,3)"
    assert batch.kinds[0].tolist() == [UNIT_KINDS.index(k) for k in kinds[0]]
    assert batch.special[:, :lead].all() and not batch.special[:, lead:].any()  # every non-patch unit
    assert torch.equal(batch.masks("self").special, batch.special) and not batch.punctuation.any()
    registers = torch.zeros(2, t, dtype=torch.bool)
    if family == "dinov2_registers":
        registers[:, 1:3] = True
    assert torch.equal(batch.kind_mask("register"), registers)
    assert batch.kind_mask("distillation")[:, 1].all() == (family == "deit")
    assert int(batch.kind_mask("class").sum()) == 2 and int(batch.kind_mask("patch").sum()) == 32

    inspector = AttentionInspector(model, None)
    recorder = WeightsRecorder()
    inspector.run(batch, recorder)
    with use_implementation(model, "eager"), torch.no_grad():
        eager = model(pixel_values=pixels, output_attentions=True).attentions
    for layer, w in recorder.weights["self"].items():
        assert w.shape == (2, 4, t, t)
        assert torch.allclose(w, eager[layer], atol=1e-5)
    results = inspector.results_from_weights(batch, recorder.weights)
    assert [r.tokens for r in results] == labels
    assert results[1].special_tokens_mask == [True] * lead + [False] * 16
    assert torch.allclose(results[1].attentions[0], eager[0][1], atol=1e-5)

    # select: rows swapped alike in pixels, units and the captured weights
    swapped = batch.select([1, 0])
    assert torch.equal(swapped.inputs["pixel_values"], pixels[[1, 0]])
    assert swapped.width == t and torch.equal(swapped.kinds, batch.kinds[[1, 0]]) and swapped.tokens(0) == labels[1]
    again = WeightsRecorder()
    inspector.run(swapped, again)
    assert torch.allclose(again.weights["self"][1], eager[1][[1, 0]], atol=1e-5)


def test_units_with_padding_and_bad_units():
    pixels = torch.zeros(2, 3, 8, 8)
    batch = Batch.from_units({"pixel_values": pixels}, [["[CLS]", "p(0,0)", "p(0,1)"], ["[CLS]", "p(0,0)"]],
                             [["class", "patch", "patch"], ["class", "patch"]])
    assert batch.lengths == [3, 2] and batch.valid.tolist() == [[True] * 3, [True, True, False]]
    assert batch.kinds[1].tolist() == [2, 5, PAD] and not batch.kind_mask("patch")[1, 2]
    assert batch.special.tolist() == [[True, False, False], [True, False, False]]
    assert batch.tokens(1) == ["[CLS]", "p(0,0)"]
    one = batch.select([1])
    assert one.lengths == [2] and one.tokens(0) == ["[CLS]", "p(0,0)"] and one.inputs["pixel_values"].shape == (1, 3, 8, 8)
    codes = Batch.from_units({"pixel_values": pixels}, [["a", "b"], ["c"]], torch.tensor([[2, 5], [2, PAD]]))
    assert codes.kinds.tolist() == [[2, 5], [2, PAD]] and codes.lengths == [2, 1] and codes.special[:, 0].all()
    with pytest.raises(InputError, match="unknown unit kind 'pixel'"):
        Batch.from_units({"pixel_values": pixels}, [["a"]], [["pixel"]])
    with pytest.raises(InputError, match="row 1 has 2 unit labels"):
        Batch.from_units({"pixel_values": pixels}, [["a", "b"]], [["class"]])
    with pytest.raises(InputError, match="kind 'cls'"):
        batch.kind_mask("cls")
