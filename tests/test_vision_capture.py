"""Images as inputs (issue 22 item 1): the four vision families through their image processors, exact against
each model's eager attention, units and grid as the processor patches the image, and one-line refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hf_attn_inspect import AttentionInspector, AttentionResult, CaptureError, InputError
from hf_attn_inspect.capture.interface import use_implementation
from tiny_vision import PATCH, SIZE, VISION_FAMILIES, save_vision, synthetic_image

GRACE = str(__import__("matplotlib.cbook").cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    cache = {}

    def make(family: str):
        if family not in cache:
            cache[family] = save_vision(family, tmp_path_factory.mktemp(family))
        return cache[family]

    return make


@pytest.fixture(scope="module")
def vision(vision_dir):
    cache = {}

    def make(family: str) -> AttentionInspector:
        if family not in cache:
            cache[family] = AttentionInspector.from_pretrained(vision_dir(family), device="cpu")
        return cache[family]

    return make


@pytest.mark.parametrize("family", list(VISION_FAMILIES))
def test_capture_equals_eager_attention_and_units_follow_the_processor(family, vision, tmp_path):
    ins = vision(family)
    lead = VISION_FAMILIES[family]
    assert ins.tokenizer is None and ins.processor is not None
    path = tmp_path / "photo.png"
    Image.fromarray(synthetic_image(seed=2)).save(path)
    images = [path, Image.fromarray(synthetic_image(seed=1)), synthetic_image(50, 30, seed=3)]
    results = ins(images, batch_size=2)
    # independent: the processor and the model itself in eager mode, output_attentions=True
    pixels = ins.processor(images=[Image.open(path).convert("RGB"), Image.fromarray(synthetic_image(seed=1)),
                                   Image.fromarray(synthetic_image(50, 30, seed=3))], return_tensors="pt")["pixel_values"]
    with use_implementation(ins.model, "eager"), torch.no_grad():
        eager = ins.model(pixel_values=pixels, output_attentions=True).attentions
    side = SIZE // PATCH
    assert pixels.shape[-2:] == (SIZE, SIZE)
    for b, r in enumerate(results):
        assert r.attentions.shape == (2, 4, lead + side * side, lead + side * side)
        for layer in range(2):
            assert torch.allclose(r.attentions[layer], eager[layer][b], atol=1e-5)
        # units: the leading tokens, then patches row by row; grid and boxes from the processed pixels
        assert r.grid.rows == pixels.shape[-2] // PATCH and r.grid.cols == pixels.shape[-1] // PATCH
        assert r.tokens[lead:lead + side + 1] == [f"p(0,{c})" for c in range(side)] + ["p(1,0)"]
        assert r.tokens[-1] == f"p({side - 1},{side - 1})" and len(r.tokens) == lead + side * side
        assert r.special_tokens_mask == [True] * lead + [False] * side * side
        boxes = r.grid.boxes()
        assert boxes[side + 2].tolist() == [2 * PATCH, PATCH, 3 * PATCH, 2 * PATCH]  # p(1,2): x0, y0, x1, y1
        assert r.grid.unit(1, 2) == lead + side + 2 and r.tokens[r.grid.unit(1, 2)] == "p(1,2)"
        # the image the views draw over is the processed pixels with the normalisation undone
        mean, std = np.array(ins.processor.image_mean), np.array(ins.processor.image_std)
        expect = np.clip(pixels[b].permute(1, 2, 0).numpy() * std + mean, 0, 1) * 255
        assert r.image.dtype == np.uint8 and np.abs(r.image.astype(float) - expect).max() <= 0.51
    assert [r.text for r in results] == ["photo.png", "image 2", "image 3"]
    kinds = {"deit": ["[CLS]", "[DIST]"], "dinov2_with_registers": ["[CLS]", "[REG0]", "[REG1]"]}
    assert results[0].tokens[:lead] == kinds.get(family, ["[CLS]"])
    # one image alone gives the same attention as inside the batch
    one = ins(images[1])
    assert isinstance(one, AttentionResult) and torch.allclose(one.attentions, results[1].attentions, atol=1e-5)


def test_result_round_trip_keeps_grid_and_image(vision, tmp_path):
    r = vision("deit")(synthetic_image())
    back = AttentionResult.load(r.save(tmp_path / "r.safetensors"))
    assert back.grid == r.grid and np.array_equal(back.image, r.image) and back.tokens == r.tokens
    assert torch.equal(back.attentions, r.attentions)


def test_layers_heads_and_measures_on_images(vision):
    r = vision("vit")(synthetic_image(), layers=[1], heads=[2, 3], measures=["weights", "norm"])
    full = vision("vit")(synthetic_image())
    assert r.layer_ids == [1] and r.head_ids == [2, 3]
    assert torch.allclose(r.attentions[0], full.attentions[1, 2:4], atol=1e-6)
    assert r.measure("norm").shape == r.attentions.shape


def test_refusals_are_one_line(vision, vision_dir, tmp_path, inspector):
    with pytest.raises(CaptureError, match="swin attends within shifted local windows") as err:
        AttentionInspector.from_pretrained(save_vision("swin", tmp_path / "swin"), device="cpu")
    assert "\n" not in str(err.value)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match="cannot read .*broken.jpg as an image"):
        vision("vit")(bad)
    with pytest.raises(InputError, match="a vision model: give it images .* not text"):
        vision("vit")("A cat on a mat.")
    with pytest.raises(InputError, match="an image was given to .* a text model"):
        inspector(synthetic_image())
    with pytest.raises(InputError, match=r"must be \[H, W\], \[H, W, 3\] or \[H, W, 4\]"):
        vision("vit")(np.zeros((4, 4, 5)))
    with pytest.raises(InputError, match="no image file at"):
        vision("vit")(tmp_path / "missing.png")


def test_a_whole_clip_checkpoint_loads_its_vision_tower(tmp_path):
    import transformers as tf

    from tiny_vision import _COMMON

    torch.manual_seed(0)
    cfg = tf.CLIPConfig(text_config={"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                     "intermediate_size": 64, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
                        vision_config=_COMMON, projection_dim=16)
    model = tf.CLIPModel(cfg).eval()
    model.save_pretrained(tmp_path)
    tf.CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}).save_pretrained(tmp_path)
    ins = AttentionInspector.from_pretrained(tmp_path, device="cpu")
    assert type(ins.model).__name__ == "CLIPVisionModel" and ins.dims() == {"self": (2, 4)}
    r = ins(synthetic_image())
    pixels = ins.processor(images=[Image.fromarray(synthetic_image())], return_tensors="pt")["pixel_values"]
    with use_implementation(model, "eager"), torch.no_grad():
        eager = model.vision_model(pixel_values=pixels, output_attentions=True).attentions
    for layer in range(2):
        assert torch.allclose(r.attentions[layer], eager[layer][0], atol=1e-5)


@pytest.mark.parametrize("family", list(VISION_FAMILIES))
def test_verify_passes_on_images(family, vision, vision_dir, capsys):
    from hf_attn_inspect.checks.verify import verify
    from hf_attn_inspect.cli import main

    report = verify(vision(family))
    assert report.passed and len(report.layers) == 2
    assert all(c.weights_max_diff <= 1e-5 and c.output_max_diff <= 1e-5 for c in report.layers)
    assert main(["verify", "--model", str(vision_dir(family)), "--device", "cpu", GRACE]) == 0
    assert "PASS" in capsys.readouterr().out.upper()


def test_verify_refuses_an_image_for_a_text_model(capsys):
    from hf_attn_inspect.cli import main

    assert main(["verify", GRACE]) == 2
    assert "an image was given to sentence-transformers/all-MiniLM-L6-v2, a text model" in capsys.readouterr().err


def test_debug_checklist_runs_on_images(vision, capsys):
    from hf_attn_inspect.checks.diagnose import diagnose
    from hf_attn_inspect.cli import main

    report = diagnose(vision("deit"), [GRACE, synthetic_image()])
    status = {f.check: f.status for f in report.findings}
    assert status["row_sums"] == "ok" and status["padding_leak"] == "ok" and status["fully_masked_rows"] == "ok"
    assert status["masks_dropped"] == "ok"  # the photo alone gives the attention it gets inside the batch
    assert status["uniform_heads"] == "fail"  # a random tiny model attends almost uniformly: the check says so
    assert main(["debug", GRACE]) == 2
    assert "an image was given to sentence-transformers/all-MiniLM-L6-v2, a text model" in capsys.readouterr().err


def test_an_in_memory_vision_model_finds_its_image_processor(vision, vision_dir):
    from hf_attn_inspect.capture.inspector import resolve_inspector

    model = vision("vit").model
    model.config._name_or_path = str(vision_dir("vit"))
    ins = resolve_inspector(model)
    assert ins.processor is not None and ins.tokenizer is None
    assert torch.allclose(ins(synthetic_image()).attentions, vision("vit")(synthetic_image()).attentions)


def test_a_bfloat16_vision_model_takes_the_float32_pixels(vision, vision_dir):
    half = AttentionInspector.from_pretrained(vision_dir("vit"), device="cpu", dtype="bfloat16")
    r = half(synthetic_image())
    assert r.attentions.dtype == torch.float32
    assert torch.allclose(r.attentions, vision("vit")(synthetic_image()).attentions, atol=2e-2)


def test_a_non_square_image_gets_a_non_square_grid(tmp_path):
    import transformers as tf

    from tiny_vision import _COMMON

    torch.manual_seed(0)
    model = tf.Dinov2Model(tf.Dinov2Config(**_COMMON)).eval()
    proc = tf.BitImageProcessor(size={"shortest_edge": 24}, do_center_crop=False)  # keeps the aspect ratio
    ins = AttentionInspector(model, processor=proc)
    r = ins(synthetic_image(40, 70))
    pixels = proc(images=[Image.fromarray(synthetic_image(40, 70))], return_tensors="pt")["pixel_values"]
    h, w = pixels.shape[-2:]
    assert (h, w) == (24, 42) and (r.grid.rows, r.grid.cols) == (h // PATCH, w // PATCH) == (3, 5)
    assert r.image.shape == (24, 40, 3) and r.grid.boxes()[-1].tolist() == [32, 16, 40, 24]
    with use_implementation(model, "eager"), torch.no_grad():
        eager = model(pixel_values=pixels, output_attentions=True).attentions
    assert r.attentions.shape[-1] == 1 + 15 and torch.allclose(r.attentions[1], eager[1][0], atol=1e-5)
