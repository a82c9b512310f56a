"""A run's state in run.json: finished only once everything is written; interrupts, failures and finished-looking
runs that lack files all say how to go on, and --resume completes them (issue 23, items 1, 5, 6)."""

from __future__ import annotations

import json

import pytest

from hf_attn_inspect.cli import main
from hf_attn_inspect.core.errors import MemoryExhaustedError, OutputError
from hf_attn_inspect.runs.sharded import run_sharded
from hf_attn_inspect.views import comparison, reports

import tiny_models
from test_batch import _counting

BATCH = ["batch", "--limit", "12", "--batch-size", "4", "--shard-size", "4", "--max-length", "16", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def tiny_bert(tmp_path_factory):
    """The CLI runs here use a saved tiny BERT (2 layers x 4 heads): quick to load."""
    path = str(tiny_models.save("bert", tmp_path_factory.mktemp("tiny") / "bert"))
    BATCH.extend(["--model", path])
    yield path
    del BATCH[-2:]


def _run(tmp):
    return json.loads((tmp / "run.json").read_text())


def test_interrupted_report_leaves_a_run_that_resume_completes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "x"
    real = reports.write_dataset_report
    calls = []

    def interrupted(out_dir, df, *a, **kw):
        calls.append(out_dir)
        if len(calls) == 1:  # Ctrl-C as soon as head_stats.csv appears
            assert (out / "head_stats.csv").exists()
            raise KeyboardInterrupt
        return real(out_dir, df, *a, **kw)

    monkeypatch.setattr(reports, "write_dataset_report", interrupted)
    assert main([*BATCH, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.startswith("error: interrupted; ") and "--resume" in err
    run = _run(out)
    assert run["status"] == "stopped" and "--resume" in run["resume"] and run["error"] == "interrupted"
    assert not (out / "report.md").exists()
    # a rerun without --resume says how to go on; --resume writes the report and finishes the run
    assert main([*BATCH, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*BATCH, "--out", str(out), "--resume"]) == 0, capsys.readouterr().err
    run = _run(out)
    assert run["status"] == "finished" and run["shards_resumed"] == 3
    assert (out / "report.md").exists() and (out / "figures" / "classes.png").exists()


def test_finished_looking_run_without_report_is_completed_by_resume(tmp_path, capsys):
    out = tmp_path / "x"
    assert main([*BATCH, "--out", str(out)]) == 0
    table = (out / "head_stats.csv").read_bytes()
    (out / "report.md").unlink()
    (out / "figures" / "entropy.png").unlink()
    assert _run(out)["status"] == "finished"
    capsys.readouterr()
    assert main([*BATCH, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "report.md" in err and "figures/entropy.png" in err and "--resume" in err
    assert main([*BATCH, "--out", str(out), "--resume"]) == 0, capsys.readouterr().err
    assert (out / "report.md").exists() and (out / "figures" / "entropy.png").exists()
    assert (out / "head_stats.csv").read_bytes() == table
    # with nothing lacking, a finished run is still not replaced
    assert main([*BATCH, "--out", str(out), "--resume"]) == 2
    assert "finished run; pass --overwrite" in capsys.readouterr().err


def test_compare_interrupted_in_report_resumes(tmp_path, capsys, monkeypatch, tiny_bert):
    out = tmp_path / "c"
    real = comparison.write_comparison
    calls = []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(comparison, "write_comparison", interrupted)
    cmd = ["compare", tiny_bert, tiny_bert, "--limit", "4", "--max-length", "16", "--top", "1", "--no-progress",
           "--out", str(out)]
    assert main(cmd) == 130
    assert "--resume" in capsys.readouterr().err and _run(out)["status"] == "stopped"
    assert sorted(p.name for p in out.iterdir()) == ["head_divergence.csv", "run.json", "shards"]
    assert main([*cmd, "--resume"]) == 0, capsys.readouterr().err
    run = _run(out)
    assert run["status"] == "finished" and run["figures"] == ["divergence_map.png", "head_diffs.png"]
    assert (out / "report.md").exists() and (out / "head_diffs.png").exists()


def test_failure_after_finished_shards_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from hf_attn_inspect.runs import dataset

    out = tmp_path / "x"
    real = dataset._run_shard

    def third_fails(inspector, ds, start, *a, **kw):
        if start == 8:
            raise MemoryExhaustedError("out of memory in shard 3")
        return real(inspector, ds, start, *a, **kw)

    monkeypatch.setattr(dataset, "_run_shard", third_fails)
    assert main([*BATCH, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of memory in shard 3; ") and "--resume" in err and "\n" not in err
    run = _run(out)
    assert run["status"] == "stopped" and run["shards_done"] == 2 and "--resume" in run["resume"]
    assert run["error"] == "MemoryExhaustedError: out of memory in shard 3"
    monkeypatch.setattr(dataset, "_run_shard", real)
    assert main([*BATCH, "--out", str(out), "--resume"]) == 0
    assert _run(out)["status"] == "finished"


def test_interrupt_between_shards_is_a_stopped_run(tmp_path):
    out = tmp_path / "run"
    compute = _counting([], shard_size=10)

    def interrupted(start, stop, bar):
        if start == 20:
            raise KeyboardInterrupt
        return compute(start, stop, bar)

    with pytest.raises(KeyboardInterrupt):
        run_sharded(35, 10, interrupted, out_dir=out, params={"shard_size": 10})
    run = _run(out)
    assert run["status"] == "stopped" and run["shards_done"] == 2 and run["error"] == "interrupted"
    resumed = run_sharded(35, 10, compute, out_dir=out, params={"shard_size": 10}, resume=True)
    assert resumed.shards_resumed == 2


def test_resume_with_other_settings_names_the_values_to_pass(tmp_path):
    out = tmp_path / "run"
    params = {"batch_size": 8, "shard_size": 10, "model": "m"}
    with pytest.raises(Exception):
        run_sharded(35, 10, _counting([], fail_at=2), out_dir=out, params=params)
    with pytest.raises(OutputError) as info:
        run_sharded(35, 10, _counting([]), out_dir=out, params={**params, "batch_size": 4, "shard_size": 5},
                    resume=True)
    assert "(batch_size, shard_size)" in str(info.value)
    assert "rerun with the same options (--batch-size 8; --shard-size 10)" in str(info.value)


def test_one_sentence_is_said_in_the_singular(tiny_bert, tmp_path, capsys):
    from hf_attn_inspect.views.words import counted

    assert (counted(1, "sentence"), counted(0, "sentence"), counted(4271, "token")) == (
        "1 sentence", "0 sentences", "4,271 tokens")
    assert main(["importance", "The cat sat on the mat.", "--model", tiny_bert, "--no-pruning", "--no-progress",
                 "--out", str(tmp_path / "i")]) == 0
    out = capsys.readouterr().out
    assert " heads on 1 sentence (ablation)" in out and "1 sentences" not in out
