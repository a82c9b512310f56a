"""The commands on images (issue 22 item 3): inspect IMAGE, view IMAGE, batch and compare on image folders and a
``datasets`` Image column, and the one-line refusals (corrupt image, text to a vision model, image to a text model)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import matplotlib.cbook as cbook
import pandas as pd
import pytest
import torch
from PIL import Image

from hf_attn_inspect import AttentionInspector
from hf_attn_inspect.cli import main
from hf_attn_inspect.stats.vision import distance_table
from test_cli import ENV
from tiny_vision import save_vision, synthetic_image

GRACE = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-cli")
    for family in ("vit", "deit", "dinov2_with_registers"):
        save_vision(family, root / family)
    save_vision("vit", root / "vit_b", seed=1)
    save_vision("swin", root / "swin")
    (root / "imgs" / "sub").mkdir(parents=True)
    shutil.copy(GRACE, root / "imgs" / "grace.jpg")
    Image.fromarray(synthetic_image()).save(root / "imgs" / "sub" / "synth.png")
    (root / "imgs" / "notes.txt").write_text("not an image")
    (root / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_inspect_image_writes_the_overlays_and_prints_distances(work, capsys):
    out = work / "o_inspect"
    rc = main(["inspect", str(work / "imgs" / "grace.jpg"), "--model", str(work / "dinov2_with_registers"), "--layer",
               "1", "--head", "2", "--top-mass", "0.6", "--out", str(out), "--html", "--all-heads"])
    text = capsys.readouterr().out
    assert rc == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["attention.html", "attention_distance.png", "head_L1_H2.png", "layer_1_heads.png",
                     "model_view.png", "rollout.png"]
    for p in out.glob("*.png"):
        with Image.open(p) as img:
            assert img.size[0] > 200 and img.size[1] > 200
    assert "units (19): [CLS] [REG0] [REG1] + 4 x 4 patches of 8 px" in text
    # the printed distance is the one the API computes on the same image
    result = AttentionInspector.from_pretrained(work / "dinov2_with_registers", device="cpu")(work / "imgs" / "grace.jpg")
    row = distance_table(result).query("layer == 1 and head == 2").iloc[0]
    assert f"mean attention distance {row['attention_distance_px']:.1f} px" in text
    assert f"register {row['to_register']:.3f}" in text and "high-norm patches" in text
    every = text.split("EVERY HEAD")[1].split("\nwrote ")[0]
    assert "attention_distance_px" in every and "to_register" in every and len(every.strip().splitlines()) == 2 + 8


def test_view_image_writes_the_explorer(work, capsys):
    page = work / "v.html"
    assert main(["view", str(work / "imgs" / "grace.jpg"), "--model", str(work / "deit"), "-o", str(page)]) == 0
    assert "18 units: 4 x 4 patches" in capsys.readouterr().out
    html = page.read_text()
    assert '"grid"' in html and "data:image/png;base64," in html


@pytest.mark.heavy
def test_batch_on_an_image_folder_and_an_image_column(work, capsys):
    out = work / "b_folder"
    assert main(["batch", "--dataset", str(work / "imgs"), "--model", str(work / "vit"), "--out", str(out),
                 "--batch-size", "1"]) == 0
    assert "analysed 2 images; 8 heads" in capsys.readouterr().out
    df = pd.read_csv(out / "head_stats.csv")
    vit = AttentionInspector.from_pretrained(work / "vit", device="cpu")
    per_image = [distance_table(vit(p))["attention_distance_px"].to_numpy()
                 for p in (work / "imgs" / "grace.jpg", work / "imgs" / "sub" / "synth.png")]
    assert df["attention_distance_px_mean"].to_numpy() == pytest.approx(sum(per_image) / 2, rel=1e-5)
    assert {"entropy_mean", "to_class_mean", "attention_distance_patches_std"} <= set(df.columns)
    assert (out / "attention_distance.png").is_file()
    # a datasets Image column (Parquet), the same images in the same order
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    ds = Dataset.from_dict({"image": [str(work / "imgs" / "grace.jpg"), str(work / "imgs" / "sub" / "synth.png")],
                            "label": [0, 1]}, features=Features({"image": ImageFeature(), "label": Value("int64")}))
    ds.to_parquet(str(work / "imgs.parquet"))
    out2 = work / "b_column"
    assert main(["batch", "--dataset", str(work / "imgs.parquet"), "--column", "image", "--model", str(work / "vit"),
                 "--out", str(out2)]) == 0
    df2 = pd.read_csv(out2 / "head_stats.csv")
    assert df2["attention_distance_px_mean"].to_numpy() == pytest.approx(df["attention_distance_px_mean"].to_numpy(), rel=1e-4)


def test_compare_two_vision_checkpoints(work, capsys):
    out = work / "cmp"
    assert main(["compare", str(work / "vit"), str(work / "vit_b"), "--image", str(work / "imgs" / "grace.jpg"),
                 "--out", str(out)]) == 0
    df = pd.read_csv(out / "head_divergence.csv")
    a = AttentionInspector.from_pretrained(work / "vit", device="cpu")(GRACE).attentions.double()
    b = AttentionInspector.from_pretrained(work / "vit_b", device="cpu")(GRACE).attentions.double()
    m = (a + b) / 2
    js = 0.5 * ((a * (a / m).log()).sum(-1) + (b * (b / m).log()).sum(-1))  # [L, H, T]
    top = df.iloc[0]
    assert top["js_divergence"] == pytest.approx(float(js[int(top["layer"]), int(top["head"])].mean()), rel=1e-4)
    assert top["js_divergence"] == pytest.approx(float(js.mean(-1).max()), rel=1e-4)
    assert "compared 8 heads on 1 image" in capsys.readouterr().out
    assert main(["compare", str(work / "vit"), str(work / "deit"), "--dataset", str(work / "imgs"), "--out",
                 str(work / "cmp2")]) == 2
    assert "see the image differently (17 vs 18 units" in capsys.readouterr().err


@pytest.mark.parametrize("case,message", [
    ("text_to_vision", "is a vision model without a tokenizer; give it images"),
    ("image_to_text", "an image was given to sentence-transformers/all-MiniLM-L6-v2, a text model"),
    ("swin", "swin attends within shifted local windows of the image"),
    ("batch_text_model", "an image was given to sentence-transformers/all-MiniLM-L6-v2, a text model"),
])
def test_bad_input_is_one_line_and_exit_2(work, case, message, capsys):
    never = work / f"never_{case}"
    argv = {"text_to_vision": ["inspect", "A cat sat on the mat.", "--model", str(work / "vit"), "--out", str(never)],
            "image_to_text": ["inspect", str(work / "imgs" / "grace.jpg"), "--out", str(never)],
            "swin": ["view", str(work / "imgs" / "grace.jpg"), "--model", str(work / "swin"), "-o", f"{never}.html"],
            "batch_text_model": ["batch", "--dataset", str(work / "imgs"), "--out", str(never)]}[case]
    assert main(argv) == 2
    err = capsys.readouterr()
    lines = _lines(err.err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err.err
    assert not never.exists() and not (work / f"never_{case}.html").exists() and err.out == ""


def test_corrupt_image_is_refused_by_the_program_before_any_model(work):
    proc = subprocess.run([sys.executable, "-m", "hf_attn_inspect", "inspect", str(work / "bad.jpg"), "--model",
                           str(work / "vit"), "--out", str(work / "never")], capture_output=True, text=True, env=ENV,
                          cwd=work, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = _lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read {work / 'bad.jpg'} as an image"), proc.stderr
    assert not (work / "never").exists()


def test_api_batch_of_images_matches_torch(work):
    ins = AttentionInspector.from_pretrained(work / "vit", device="cpu")
    r = ins([work / "imgs" / "grace.jpg"])[0]
    assert torch.allclose(r.attentions.sum(-1), torch.ones(2, 4, 17), atol=1e-5)
