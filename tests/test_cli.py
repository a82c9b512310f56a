"""The command line: the README's first command, verify on every family, one-line errors with exit 2."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hf_attn_inspect.cli import main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}


def run_cli(*args, cwd=None):
    """Run the real console entry point in a subprocess (so exit codes and stderr are the user's)."""
    return subprocess.run([sys.executable, "-m", "hf_attn_inspect", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


@pytest.mark.heavy
def test_readme_first_command_prints_analysis_and_writes_pngs(tmp_path):
    proc = run_cli("inspect", "The cat sat on the mat.", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "layer 0, head 0 pattern: broad (" in proc.stdout and "mean_entropy" in proc.stdout
    assert "[CLS] the cat sat on the mat . [SEP]" in proc.stdout
    pngs = sorted((tmp_path / "attention_out").glob("*.png"))
    assert [p.name for p in pngs] == ["head_L0_H0.png", "layer_0_heads.png", "model_view.png"]
    for p in pngs:
        with Image.open(p) as img:
            img.verify()
        with Image.open(p) as img:
            assert img.size[0] > 300 and img.size[1] > 300
    assert "Traceback" not in proc.stderr


def test_inspect_all_heads_prints_every_head_with_its_class(tmp_path, capsys, inspector):
    from hf_attn_inspect.stats.patterns import head_table

    assert main(["inspect", "The cat sat on the mat.", "--all-heads", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = out.split("EVERY HEAD")[1].splitlines()[2:]
    rows = [line.split() for line in table if line.strip() and not line.startswith("wrote")]
    assert len(rows) == 72
    expected = head_table(inspector("The cat sat on the mat."))
    got = {(int(r[0]), int(r[1])): r[2] for r in rows}
    assert got[(2, 11)] == expected.set_index(["layer", "head"]).loc[(2, 11), "class"].split()[0]


def test_inspect_pair_layer_head_svg_html(tmp_path, capsys):
    code = main(["inspect", "The cat sat.", "--pair", "It slept.", "--layer", "5", "--head", "11",
                 "--out", str(tmp_path), "--format", "svg", "--html"])
    assert code == 0
    assert (tmp_path / "head_L5_H11.svg").read_text().startswith("<?xml")
    page = (tmp_path / "attention.html").read_text()
    assert page.lstrip().lower().startswith("<!doctype html")
    assert '"slept"' in page and "http://" not in page and "https://" not in page
    assert "layer 5, head 11" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["inspect", "   "], "empty"),
        (["inspect", ""], "empty"),
        (["inspect", "hi", "--layer", "6"], "valid layers: 0..5"),
        (["inspect", "hi", "--head", "-1"], "--head counts from 0; got -1"),  # before the model loads
        (["inspect", "hi", "--head", "12"], "valid heads: 0..11"),
        (["inspect", "hi", "--model", "/nonexistent/model-dir"], "model directory '/nonexistent/model-dir' does not exist"),
        (["inspect", "word " * 600, "--no-truncate"], "more than the maximum"),
        (["verify", " "], "empty"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, message, capsys):
    """In-process through the console entry point's ``main`` (the subprocess test below covers the real program)."""
    argv = [*args, "--out", str(tmp_path / "o")] if args[0] == "inspect" else list(args)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_bad_input_in_the_real_program_is_one_line_exit_2(tmp_path):
    proc = run_cli("inspect", "   ", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["error: text is empty or blank"], proc.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_unknown_model_points_to_local_path_and_default(capsys):
    """In-process (the real program's exit 2 and one-line stderr: test_bad_input_in_the_real_program...)."""
    assert main(["verify", "--model", "no-such-org/no-such-model-xyz"]) == 2
    err = capsys.readouterr().err
    assert "local model directory" in err and "embedded default" in err


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("inspect", "hi", "--out", str(blocker / "out"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot write to output directory")


def test_long_text_is_truncated_with_visible_warning(tmp_path, capsys):
    """In-process through ``main``, which installs the one-line ``warning:`` printer the real program uses."""
    assert main(["inspect", "word " * 600, "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "truncated to 512" in err


def test_verify_passes_on_the_embedded_default(capsys):
    assert main(["verify"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and out.count("\nself ") == 6


@pytest.mark.parametrize("family", ["bert", "sdpa_bert", "gpt2", "llama", "bart", "deberta"])
def test_verify_passes_on_each_family(family, tiny_dir, capsys):
    code = main(["verify", "--model", str(tiny_dir(family)), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    layers = 6 if family == "bart" else 2
    assert sum(line.split()[0] in ("self", "encoder", "decoder", "cross") for line in out.splitlines()[2:]) == layers


def test_verify_fails_when_capture_is_wrong(monkeypatch, capsys):
    """A planted error in the reference core must turn verify red (exit 1)."""
    import hf_attn_inspect.capture.recorders as capture  # the reference core of every run's RecordingProbe

    original = capture.scaled_dot_product_attention_with_weights

    def skewed(q, k, v, mask=None, **kw):
        out, w = original(q, k, v, mask, **kw)
        return out * 1.001, w

    monkeypatch.setattr(capture, "scaled_dot_product_attention_with_weights", skewed)
    assert main(["verify"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_version_prints_the_package_version(capsys):
    from importlib import metadata

    import hf_attn_inspect

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hf-attn-inspect {hf_attn_inspect.__version__}"
    assert hf_attn_inspect.__version__ == metadata.version("hf-attn-inspect")


def test_inspect_of_a_cut_input_says_the_cut_and_shows_the_weights(tiny_dir, tmp_path, capsys):
    """Issue 23: a text cut to --max-length names the cut in the figures' titles and the printed token line,
    which is shortened and wrapped instead of listing every token on one line."""
    text = " ".join(["the cat sat on the mat"] * 50)  # 300 words
    rc = main(["inspect", text, "--model", str(tiny_dir("llama")), "--max-length", "200", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.splitlines()
    start = lines.index(next(x for x in lines if x.startswith("tokens (")))
    token_lines = [lines[start]]
    while lines[start + len(token_lines)].startswith("  "):  # the wrapped continuation lines
        token_lines.append(lines[start + len(token_lines)])
    assert token_lines[0].startswith("tokens (200; cut from 302 tokens to 200): ")
    assert 1 < len(token_lines) <= 3 and all(len(x) <= 100 for x in token_lines)
    assert " ... " in " ".join(token_lines) and len(" ".join(token_lines).split()) < 40
    with Image.open(tmp_path / "head_L0_H0.png") as img:
        grey = np.asarray(img.convert("L"), dtype=float)
    assert (grey < 200).mean() > 0.3  # most of the plot is coloured, not near-white


def test_inspect_cross_attention_explains_itself(tiny_dir, tmp_path, capsys):
    rc = main(["inspect", "The cat sat on the mat.", "--model", str(tiny_dir("bart")), "--attention", "cross",
               "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "cross-attention: each decoder token (a row, query) over the encoder's tokens" in out
    assert "decoder tokens (" in out and "encoder tokens (" in out
    assert "layer 0, head 0 cross-attention:" in out and "of its maximum" in out and "most attended encoder token" in out


def test_inspect_causal_entropy_uses_one_maximum(tiny_dir, tmp_path, capsys):
    """GPT-2: the verdict's entropy share and the raw fields use the same (causal) maximum, and say which."""
    import re

    rc = main(["inspect", "The cat sat on the mat.", "--model", str(tiny_dir("gpt2")), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    share = float(re.search(r"entropy ([0-9.]+) of its maximum", out).group(1))
    entropy, maximum = map(float, re.search(r"mean_entropy ([0-9.]+) / max_entropy ([0-9.]+) nats", out).groups())
    n = int(re.search(r"tokens \((\d+)\)", out).group(1))
    assert maximum == pytest.approx(float(np.mean(np.log(np.arange(1, n + 1)))), abs=1e-3)
    assert share == pytest.approx(entropy / maximum, abs=0.01)
    assert "max_entropy is the mean over query rows of ln(keys the row can see)" in out
    assert f"mean_entropy / max_entropy = {share:.2f}" in out
