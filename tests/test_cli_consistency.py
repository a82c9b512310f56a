"""The command line answers fast and alike (issue 15, items 5-8 and 11).

- ``--help`` of the program and of every command, and every input error that needs no model, answer
  without importing torch or transformers (checked in a fresh interpreter);
- a ``--model`` path that does not exist, a CSV holding only its header, and CSV texts that read
  ``NaN``/``null``/``None`` get what a user expects;
- the shared options mean the same on every command that has them, and every command's ``--help`` ends
  with two examples that parse.

Generic over the registered commands: a command added later is checked too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hf_attn_inspect.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings}


# ----------------------------------------------------------------------------- item 5: lazy imports
def test_help_and_early_errors_do_not_import_torch(tmp_path):
    """One fresh interpreter runs --help of everything and every model-free input error, then reports
    which heavy modules got imported."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    good = tmp_path / "good.txt"
    good.write_text("The cat sat on the mat.")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\nThe cat sat.,1\nIt slept.,0\n")
    latin_csv = tmp_path / "latin1.csv"
    latin_csv.write_bytes("text\ncaf\xe9 cr\xe8me\n".encode("latin-1"))
    out = str(tmp_path / "out")
    errors = [
        ["inspect", "   "], ["inspect", ""], ["inspect", "hi", "--pair", " "], ["view", ""], ["verify", " "], ["debug", ""],
        ["long", str(tmp_path / "missing.txt"), "--out", out], ["long", str(latin), "--out", out],
        ["long", str(empty), "--out", out],
        ["inspect", "hi", "--max-length", "1"], ["view", "hi", "--max-length", "1"], ["debug", "--max-length", "1"],
        ["batch", "--max-length", "1", "--out", out], ["compare", "a", "b", "--max-length", "1", "--out", out],
        ["long", str(latin), "--max-length", "0", "--out", out],
        ["batch", "--limit", "0", "--out", out], ["batch", "--batch-size", "0", "--out", out],
        ["compare", "a", "b", "--top", "-1", "--out", out], ["batch", "--resume", "--overwrite", "--out", out],
        ["inspect", "hi", "--out", str(blocker / "out")], ["long", str(good), "--out", str(blocker)],
        ["batch", "--out", str(blocker / "o")], ["compare", "a", "b", "--out", str(blocker)],
        ["view", "hi", "-o", str(blocker / "x.html")],
        ["batch", "--dataset", str(tmp_path / "missing.csv"), "--out", out],
        ["compare", "a", "b", "--dataset", "./missing.jsonl", "--out", out],
        ["inspect", str(tmp_path / "missing.png"), "--out", out], ["inspect", str(corrupt), "--out", out],
        ["view", str(corrupt), "-o", str(tmp_path / "v.html")], ["compare", "a", "b", "--image", str(corrupt), "--out", out],
        ["generate", "hi", "--out", out], ["generate", " ", "--model", "m", "--out", out],
        ["generate", "hi", "--model", "m", "--seed", "1", "--out", out],
        ["generate", "hi", "--model", "m", "--max-new-tokens", "0", "--out", out],
        ["generate", "hi", "--model", "m", "--out", str(blocker / "o")],
        # issue 23: checks that need no model answer before it loads
        ["inspect", "hi", "--head", "-1"], ["inspect", "hi", "--layer", "-1"], ["view", "hi", "--layers", "0", "-2"],
        ["inspect", "hi", "--max-memory", "lots"], ["view", "hi", "--max-memory", "lots"],
        ["inspect", "hi", "--model", "./nope"], ["batch", "--model", "./nope", "--out", out],
        ["compare", "default", "./nope", "--out", out], ["debug", "--model", "./nope"],
        ["importance", "--dataset", str(labelled), "--label-column", "lab", "--out", out],
        ["batch", "--dataset", str(latin_csv), "--out", out],
    ]
    names = list(_commands())
    code = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from hf_attn_inspect.cli import main
        results = []
        for argv in [[]] + [[c] for c in {names!r}]:
            with contextlib.redirect_stdout(io.StringIO()) as so:
                try:
                    main([*argv, "--help"])
                except SystemExit as e:
                    results.append(["help", argv, e.code, so.getvalue()[:40]])
        for argv in {errors!r}:
            with contextlib.redirect_stderr(io.StringIO()) as se:
                results.append(["error", argv, main(argv), se.getvalue()])
        heavy = sorted(m for m in ("torch", "transformers", "matplotlib") if m in sys.modules)
        print(json.dumps({{"results": results, "heavy": heavy}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert len(report["results"]) == 1 + len(names) + len(errors)
    for kind, argv, rc, text in report["results"]:
        if kind == "error":
            lines = [line for line in text.splitlines() if line.strip()]
            assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, text)
        else:
            assert rc == 0 and text.startswith("usage: hf-attn-inspect"), (argv, text)
    assert report["heavy"] == [], f"imported before the first model was needed: {report['heavy']}"
    messages = {" ".join(a): t for _, a, _, t in report["results"]}
    assert "not UTF-8" in messages[f"long {latin} --out {out}"]
    assert "not UTF-8" in messages[f"batch --dataset {latin_csv} --out {out}"]
    assert "label column 'lab' not found" in messages[f"importance --dataset {labelled} --label-column lab --out {out}"]
    assert "does not exist" in messages[f"compare default ./nope --out {out}"]
    assert "--head counts from 0; got -1" in messages["inspect hi --head -1"]
    assert "cannot read memory size 'lots'" in messages["view hi --max-memory lots"]
    assert "does not exist" in messages[f"batch --dataset {tmp_path / 'missing.csv'} --out {out}"]
    assert "cannot write to output directory" in messages[f"inspect hi --out {blocker / 'out'}"]
    assert "as an image" in messages[f"inspect {corrupt} --out {out}"] and "no image file" in messages[f"inspect {tmp_path / 'missing.png'} --out {out}"]
    assert "pass --model" in messages[f"generate hi --out {out}"]
    assert not (tmp_path / "out").exists()


def test_bench_cli_runs():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_cli.py"), "--repeats", "1"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "--help" in proc.stdout and "python -c pass" in proc.stdout


# ----------------------------------------------------------------------------- item 6: a model path that is not there
@pytest.mark.parametrize("path", ["/no/such/model-dir", "./no-such-model", "~/no-such-model-dir-xyz", "../x/y"])
def test_a_missing_model_directory_is_named(path, capsys):
    assert main(["verify", "--model", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: model directory '{path}' does not exist") and len(err.splitlines()) == 1, err
    assert "Repo id" not in err and "alphanumeric" not in err


def test_an_existing_home_relative_model_directory_loads(tmp_path, tiny_dir, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "m").symlink_to(tiny_dir("bert"), target_is_directory=True)
    monkeypatch.setenv("HOME", str(home))
    assert main(["verify", "--model", "~/m", "--device", "cpu"]) == 0, capsys.readouterr().err


# ----------------------------------------------------------------------------- items 7 and 8: CSV files
def test_a_header_only_csv_has_no_rows(tmp_path, capsys):
    from hf_attn_inspect.runs.sources import load_dataset_texts
    from hf_attn_inspect.core.errors import InputError

    path = tmp_path / "h.csv"
    path.write_text("text\n")
    out = tmp_path / "out"
    assert main(["batch", "--dataset", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the dataset" in err and "has no rows" in err and "corresponds to no data" not in err, err
    assert not out.exists()
    for content, name in (("", "e.jsonl"), ("", "e.txt"), ("text,label\n", "two.csv")):
        (tmp_path / name).write_text(content)
        with pytest.raises(InputError, match="has no rows"):
            load_dataset_texts(str(tmp_path / name))


def test_nan_null_none_texts_are_text(tmp_path, tiny_dir, capsys):
    from hf_attn_inspect.runs.sources import load_dataset_texts

    path = tmp_path / "words.csv"
    path.write_text("text,label\nNaN,1\nnull,0\nNone,1\nNA,0\nhello,1\n,0\n", encoding="utf-8")
    ds, _ = load_dataset_texts(str(path))
    assert ds["text"][:5] == ["NaN", "null", "None", "NA", "hello"] and ds["text"][5] in ("", None)
    out = tmp_path / "out"
    assert main(["batch", "--model", str(tiny_dir("bert")), "--dataset", str(path), "--out", str(out), "-q"]) == 0
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert counts["analysed"] == 5 and counts["skipped_total"] == 1, counts


# ----------------------------------------------------------------------------- item 11: the same flags everywhere
SHARED = {
    "--quiet": ("batch", "compare"),
    "--device": ("inspect", "verify", "debug", "view", "batch", "compare", "long", "generate"),
    "--max-length": ("inspect", "debug", "view", "batch", "compare", "long"),
    "--overwrite": ("inspect", "view", "batch", "compare", "long", "generate"),
    "--resume": ("batch", "compare"),
}


def test_shared_options_are_defined_alike():
    commands = _commands()
    for flag, where in SHARED.items():
        for name in where:
            assert flag in _options(commands[name]), f"{name} lacks {flag}"
        # every command that has the flag defines it the same way (same spellings, type, action, help)
        seen = {}
        for name, p in commands.items():
            act = _options(p).get(flag)
            if act is not None:
                default_free_help = (act.help or "").split("(default")[0]
                seen[name] = (tuple(act.option_strings), act.type, type(act).__name__, act.dest, default_free_help)
        assert len(set(seen.values())) == 1, f"{flag} differs: {seen}"


def test_shared_option_values_are_checked_alike(capsys):
    for name in SHARED["--max-length"]:
        argv = {"inspect": ["inspect", "hi"], "view": ["view", "hi"], "debug": ["debug"], "batch": ["batch", "--out", "o"],
                "compare": ["compare", "a", "b", "--out", "o"], "long": ["long", "-", "--out", "o"]}[name]
        if name == "long":
            continue  # reads stdin first; covered in the subprocess test
        assert main([*argv, "--max-length", "1"]) == 2
        assert capsys.readouterr().err.strip() == "error: --max-length must be at least 2, got 1", name


def test_quiet_is_accepted_and_unknown_flags_show_the_commands_usage(capsys):
    for name in SHARED["--quiet"]:
        args = build_parser().parse_args([name, *(["a", "b"] if name == "compare" else []), "--out", "o", "-q"])
        assert args.quiet is True
    with pytest.raises(SystemExit) as exc:
        main(["batch", "--out", "o", "--no-such-flag"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: hf-attn-inspect batch" in err and "unrecognized arguments: --no-such-flag" in err


def test_every_command_help_shows_two_examples_that_parse(capsys):
    parser = build_parser()
    for name, p in _commands().items():
        help_text = p.format_help()
        assert "examples:" in help_text, name
        lines = [line.strip() for line in help_text.split("examples:")[1].splitlines() if line.strip()]
        assert len(lines) >= 2 and all(line.startswith(f"hf-attn-inspect {name}") for line in lines), (name, lines)
        for line in lines:
            args = parser.parse_args(shlex.split(line)[1:])  # raises SystemExit on a flag that does not exist
            assert args.command == name
