"""scripts/finetune_demo.py runs end to end (a couple of steps here; the default is 200) and names the heads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "finetune_demo.py"


@pytest.mark.heavy
def test_finetune_demo_end_to_end(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("finetune_demo", SCRIPT)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = tmp_path / "ft"
    code = demo.main(["--out", str(out), "--steps", "2", "--every", "1", "--batch-size", "4", "--compare-limit", "6"])
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("before/config.json", "after/config.json", "after/model.safetensors", "compare/head_divergence.csv",
                 "compare/report.md", "attention_stats.jsonl", "trends_entropy.png", "trends_top_heads.png", "top_head.gif"):
        assert (out / name).is_file(), name
    df = pd.read_csv(out / "compare" / "head_divergence.csv")
    top = df.iloc[0]
    assert top.js_divergence > 0  # two optimizer steps moved attention
    assert f"layer {int(top.layer)} head {int(top['head'])}: {top.js_divergence:.4f}" in printed
    assert f"1. layer {int(top.layer)} head {int(top['head'])}: JS" in (out / "compare" / "report.md").read_text()
    steps = [json.loads(line)["step"] for line in (out / "attention_stats.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]
    with Image.open(out / "top_head.gif") as gif:
        assert gif.n_frames == 3
    assert demo.main(["--out", str(out), "--steps", "1"]) == 2  # an existing run is not overwritten silently
