"""The ``generate`` command and the generation figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import tiny_models
from hf_attn_inspect import AttentionInspector, AttentionResult
from hf_attn_inspect.capture.result import GenerationResult
from hf_attn_inspect.cli import main
from hf_attn_inspect.views.generation import generation_rows, plot_generation

PROMPT = "the cat sat on the mat"


@pytest.mark.parametrize("family", ["gpt2", "bart"])
def test_command_writes_the_four_files(tiny_dir, tmp_path, capsys, family):
    out = tmp_path / "out"
    argv = ["generate", PROMPT, "--model", str(tiny_dir(family)), "--device", "cpu", "--max-new-tokens", "7",
            "--out", str(out), "--alternatives", "3"]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["generation.png", "tokens.csv", "attention.safetensors", "generation.html"])
    saved = AttentionResult.load(out / "attention.safetensors")
    assert isinstance(saved, GenerationResult)
    insp = AttentionInspector.from_pretrained(str(tiny_dir(family)), device="cpu")
    direct = insp.generate(PROMPT, max_new_tokens=7, alternatives=3)
    assert saved.sequence_tokens == direct.sequence_tokens
    assert torch.allclose(saved.attentions, direct.attentions, atol=1e-6)
    table = pd.read_csv(out / "tokens.csv", keep_default_na=False)
    assert table["token"].tolist() == direct.sequence_tokens
    assert table["source"].tolist() == ["prompt"] * direct.prompt_length + ["generated"] * direct.num_generated
    gen = table[table["source"] == "generated"]
    assert np.allclose(gen["probability"].astype(float), direct.probabilities, atol=1e-6)
    assert gen["alternatives"].iloc[0].split("; ")[0].startswith(direct.alternatives[0][0][0] + " (")
    text = capsys.readouterr().out
    assert "generated (7 tokens)" in text or f"generated ({direct.num_generated} tokens)" in text
    # a second run refuses to replace the files without --overwrite... unless they are its own
    assert main(argv) == 0


def test_command_errors_are_one_line(tiny_dir, tmp_path, capsys):
    assert main(["generate", PROMPT, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model" in err[0] and "MiniLM" in err[0]
    assert main(["generate", PROMPT, "--model", str(tiny_dir("bert")), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a generative model" in err[0]
    assert main(["generate", PROMPT, "--model", str(tiny_dir("gpt2")), "--head", "9", "--out", str(tmp_path / "o")]) == 2
    assert "head 9 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def long_generation():
    insp = AttentionInspector(tiny_models.build("llama"), tiny_models.tokenizer())
    return insp.generate("the quick brown fox jumps over the lazy dog", max_new_tokens=100, do_sample=True, seed=0)


def test_figure_draws_the_rows_that_wrote_each_token(long_generation):
    res = long_generation
    ax = plot_generation(res, 1, 2)
    drawn = np.asarray(ax.images[0].get_array())
    n, p = res.num_generated, res.prompt_length
    # row k: the query of position p + k - 1, over the context before the last token
    expected = res.attentions[res.layer_index(1), 2, p - 1:p - 1 + n, : p + n - 1].numpy()
    assert drawn.shape == (n, p + n - 1) and np.allclose(drawn, expected)
    assert len(ax.get_yticks()) <= 60 and len(ax.get_xticks()) <= 60  # thinned at 100 tokens
    assert any(np.allclose(line.get_xdata(), p - 0.5) for line in ax.lines)  # prompt | generated
    right = [a for a in ax.figure.axes if a is not ax and a.get_ylabel() == "p(token)"][0]
    first = right.get_yticklabels()[0].get_text()
    assert first == (f"{res.probabilities[0]:.2f}" if res.probabilities[0] >= 0.01 else f"{res.probabilities[0]:.0e}")


def test_head_average_and_cross_rows(tiny_model, tiny_tokenizer):
    res = AttentionInspector(tiny_model("bart"), tiny_tokenizer).generate(PROMPT, max_new_tokens=4)
    rows, what = generation_rows(res, 0, None, "cross")
    assert np.allclose(rows, res.cross_attentions[0].mean(0)[:res.num_generated].numpy())
    assert "cross" in what and np.allclose(rows.sum(-1), 1, atol=1e-5)
    ax = plot_generation(res, 0, which="cross")
    assert ax.get_xlabel() == "source token"
