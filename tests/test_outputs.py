"""Output files of every command: umask permissions, nothing of the user's replaced, failed runs blocking
nothing, no empty folders left by errors (issue 15, items 1-4).

The commands run in-process through ``main`` on a tiny saved BERT (fast); the reproduction commands of the
issue on the embedded model are the first test of each kind.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from hf_attn_inspect.cli import main
from hf_attn_inspect.core import files
from hf_attn_inspect.core.errors import OutputError


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _commands(model: str, out: Path, text_file: Path) -> dict[str, list[str]]:
    """One run of each file-writing command on ``model``, writing into ``out``."""
    return {
        "batch": ["batch", "--model", model, "--limit", "6", "--batch-size", "3", "--shard-size", "4", "--out", str(out), "-q"],
        "compare": ["compare", model, model, "--text", "The cat sat.", "--text", "A dog ran far.", "--top", "1",
                    "--out", str(out), "-q"],
        "inspect": ["inspect", "The cat sat on the mat.", "--model", model, "--out", str(out)],
        "long": ["long", str(text_file), "--model", model, "--bins", "4", "--out", str(out)],
    }


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "doc.txt"
    path.write_text("The cat sat on the mat. " * 20, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- item 1: umask
@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_output_follows_the_umask(tmp_path, tiny_dir, text_file, mask, capsys):
    model = str(tiny_dir("bert"))
    old = os.umask(mask)
    try:
        for name in ("batch", "compare", "inspect", "long"):
            out = tmp_path / name / "out"  # two missing levels: both created with the first file
            assert main(_commands(model, out, text_file)[name]) == 0, capsys.readouterr().err
            paths = [out.parent, *out.rglob("*")]
            written = [p for p in paths if p.is_file()]
            assert len(written) >= 4, name
            for p in paths:
                want = (0o777 if p.is_dir() else 0o666) & ~mask
                assert stat.S_IMODE(p.stat().st_mode) == want, f"{name}: {p.relative_to(tmp_path)} is {oct(p.stat().st_mode)}"
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- item 2: nothing of the user's replaced
def test_batch_refuses_to_replace_a_users_file_issue_reproduction(tmp_path, capsys):
    """`mkdir d; echo mine > d/head_stats.csv; hf-attn-inspect batch --limit 10 --out d` (embedded model)."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "head_stats.csv").write_text("mine\n")
    assert main(["batch", "--limit", "10", "--out", str(d)]) == 2
    line = _one_error(capsys)
    assert str(d / "head_stats.csv") in line and "--overwrite" in line
    assert (d / "head_stats.csv").read_text() == "mine\n"
    assert sorted(p.name for p in d.iterdir()) == ["head_stats.csv"]  # nothing else written either


@pytest.mark.parametrize("command,victim", [
    ("batch", "figures/classes.png"), ("batch", "report.md"), ("compare", "head_divergence.csv"),
    ("compare", "run.json"), ("inspect", "model_view.png"), ("long", "sinks.csv"),
])
def test_no_command_replaces_a_file_it_did_not_write(tmp_path, tiny_dir, text_file, command, victim, capsys):
    out = tmp_path / "out"
    (out / victim).parent.mkdir(parents=True)
    (out / victim).write_text("mine")
    argv = _commands(str(tiny_dir("bert")), out, text_file)[command]
    assert main(argv) == 2
    line = _one_error(capsys)
    assert str(out / victim) in line and "not written by hf-attn-inspect" in line
    assert (out / victim).read_text() == "mine"
    # --overwrite replaces it, and the user's other files stay
    (out / "keep.txt").write_text("not an output")
    assert main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    assert (out / victim).read_bytes() != b"mine" and (out / "keep.txt").read_text() == "not an output"


def test_files_of_an_earlier_run_of_ours_are_replaced(tmp_path, tiny_dir, text_file, capsys):
    """inspect and long write again into their own folder without --overwrite; view replaces its own page,
    not someone else's."""
    model = str(tiny_dir("bert"))
    cmds = _commands(model, tmp_path / "out", text_file)
    for name in ("inspect", "long"):
        argv = [a.replace(str(tmp_path / "out"), str(tmp_path / name)) for a in cmds[name]]
        assert main(argv) == 0 and main(argv) == 0, capsys.readouterr().err
        assert (tmp_path / name / files.RECORD_NAME).is_file()
    page = tmp_path / "page.html"
    argv = ["view", "The cat sat.", "--model", model, "-o", str(page)]
    assert main(argv) == 0 and main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    mine = tmp_path / "mine.html"
    mine.write_text("<!DOCTYPE html><p>my notes</p>")
    assert main(["view", "The cat sat.", "--model", model, "-o", str(mine)]) == 2
    assert str(mine) in _one_error(capsys) and mine.read_text() == "<!DOCTYPE html><p>my notes</p>"
    assert main(["view", "The cat sat.", "--model", model, "-o", str(mine), "--overwrite"]) == 0


def test_check_replaceable_and_record(tmp_path):
    folder = tmp_path / "f"
    check_replaceable, record_outputs = files.check_replaceable, files.record_outputs
    check_replaceable(folder, ["a.csv"])  # a missing folder holds nothing to protect
    folder.mkdir()
    (folder / "a.csv").write_text("user")
    with pytest.raises(OutputError, match="a.csv exists and was not written by hf-attn-inspect"):
        check_replaceable(folder, ["b.csv", "a.csv"])
    check_replaceable(folder, ["a.csv"], overwrite=True)
    check_replaceable(folder, ["a.csv"], owned=["a.csv"])
    record_outputs(folder, ["a.csv", "sub/b.png"])
    check_replaceable(folder, ["a.csv", "sub/b.png"])
    assert json.loads((folder / files.RECORD_NAME).read_text())["files"] == ["a.csv", "sub/b.png"]


# ----------------------------------------------------------------------------- item 3: failed runs block nothing
def test_bad_input_writes_nothing_and_blocks_nothing_issue_reproduction(tmp_path, capsys):
    """`batch --limit 0 --out x` then `batch --limit 5 --out x` (embedded model)."""
    x = tmp_path / "x"
    assert main(["batch", "--limit", "0", "--out", str(x)]) == 2
    assert "--limit must be at least 1" in _one_error(capsys)
    assert not x.exists()
    assert main(["batch", "--limit", "5", "--out", str(x), "-q"]) == 0, capsys.readouterr().err
    assert json.loads((x / "run.json").read_text())["status"] == "finished"


def test_a_failed_run_is_recorded_as_failed_and_the_next_run_goes_ahead(tmp_path, tiny_dir, capsys):
    model = str(tiny_dir("bert"))
    blank = tmp_path / "blank.csv"
    blank.write_text('text\n" "\n"  "\n', encoding="utf-8")
    out = tmp_path / "out"
    assert main(["batch", "--model", model, "--dataset", str(blank), "--out", str(out), "-q"]) == 2
    assert "no usable text" in _one_error(capsys)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "no usable text" in run["error"]
    assert main(["batch", "--model", model, "--limit", "4", "--out", str(out), "-q"]) == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["counts"]["analysed"] == 4
    # the failed run's shards were cleared, so only the new run's shard is there
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-000000.npz"]


# ----------------------------------------------------------------------------- item 4: no empty folders
@pytest.mark.parametrize("argv", [
    ["inspect", "hi", "--model", "./no-such-model"],
    ["inspect", "hi", "--layer", "6"],
    ["inspect", "hi", "--model", "no-such-org/no-such-model-xyz"],
    ["batch", "--model", "./no-such-model"],
    ["compare", "default", "./no-such-model", "--text", "hi"],
    ["long", "DOC", "--model", "./no-such-model"],
    ["view", "hi", "--model", "./no-such-model"],
])
def test_errors_leave_no_output_folder(tmp_path, argv, text_file, capsys):
    out = tmp_path / "a" / "out"
    argv = [str(text_file) if a == "DOC" else a for a in argv]
    argv += ["-o", str(out / "x.html")] if argv[0] == "view" else ["--out", str(out)]
    assert main(argv) == 2
    _one_error(capsys)
    assert not (tmp_path / "a").exists()


def test_check_output_dir_creates_nothing(tmp_path):
    check_output_dir = files.check_output_dir
    target = tmp_path / "a" / "b"
    assert check_output_dir(target) == target and not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write to output directory"):
        check_output_dir(tmp_path / "file" / "out")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        check_output_dir(tmp_path / "file")
