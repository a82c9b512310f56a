"""Scaling out: `batch` and `compare` on several processes (torchrun / accelerate launch, CPU, gloo) give the
files of one process; a killed rank stops the others with one line and `--resume` finishes the run; a
streaming dataset gives the numbers of the same rows read whole."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import tiny_models
from hf_attn_inspect import DistributedError
from hf_attn_inspect.cli import main
from hf_attn_inspect.core.errors import InputError
from hf_attn_inspect.runs.compare import compare_models
from hf_attn_inspect.runs.dataset import SentenceStatsRecorder, analyze_dataset
from hf_attn_inspect.runs.distributed import TIMEOUT_ENV, processes
from hf_attn_inspect.runs.sharded import ShardStats, run_sharded, shard_path
from hf_attn_inspect.runs.sources import StreamRows, load_dataset_texts, sample_sentences

ROOT = Path(__file__).resolve().parent.parent
# The shipped sample, 96 rows in shards of 16: 6 shards, 3 per rank with 2 processes.
BATCH = ["--limit", "96", "--shard-size", "16", "--batch-size", "16"]
BATCH_KW = {"limit": 96, "shard_size": 16, "batch_size": 16}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(argv: list[str], world: int = 2, **extra: str) -> list[subprocess.Popen]:
    """Start ``world`` processes of ``argv`` with the environment torchrun gives its workers."""
    port = str(_free_port())
    return [
        subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(world), RANK=str(r), LOCAL_RANK=str(r),
            LOCAL_WORLD_SIZE=str(world), **extra))
        for r in range(world)
    ]


@pytest.fixture(scope="module")
def one_process(inspector, tmp_path_factory):
    """The single-process run of BATCH on the embedded model (the reference every other run must equal)."""
    out = tmp_path_factory.mktemp("one") / "run"
    analyze_dataset(inspector, None, out=out, **BATCH_KW)
    return out


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two tiny BERTs (different seeds) saved with the shared tokenizer: directories for compare."""
    dirs = []
    for seed in (0, 1):
        d = tmp_path_factory.mktemp(f"bert{seed}")
        tiny_models.build("bert", seed=seed).save_pretrained(d)
        tiny_models.tokenizer().save_pretrained(d)
        dirs.append(str(d))
    return dirs


# --------------------------------------------------------------------------- several processes
@pytest.mark.heavy
def test_torchrun_batch_equals_one_process(one_process, tmp_path):
    out = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "hf_attn_inspect", "batch", *BATCH, "--out", str(out), "--no-progress"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("head_stats.csv", "layer_stats.csv"):
        assert (out / name).read_bytes() == (one_process / name).read_bytes(), name
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["world_size"] == 2
    # shards are dealt out in rounds: 3 of the 6 to each rank, and their rows add up to the dataset
    assert [(r["rank"], r["shards"], r["rows"]) for r in run["ranks"]] == [(0, 3, 48), (1, 3, 48)]
    assert run["counts"]["analysed"] == 96
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"shard-{i:06d}.npz" for i in range(6)]
    assert (out / "report.md").exists() and (out / "figures").is_dir()
    assert proc.stdout.count("analysed 96 of 96 rows") == 1  # rank 0 alone says what was done


@pytest.mark.heavy
def test_killed_rank_stops_the_other_then_one_process_resumes(one_process, inspector, tmp_path):
    out = tmp_path / "killed"
    timeout = 60
    procs = _ranks([sys.executable, "-m", "hf_attn_inspect", "batch", *BATCH, "--out", str(out),
                    "--no-progress"], **{TIMEOUT_ENV: str(timeout)})
    try:
        deadline = time.time() + 240
        # rank 1's first shard: it is midway (it cannot start its third shard before rank 0 ends its second)
        while not shard_path(out, 1).exists():
            assert procs[1].poll() is None and time.time() < deadline, procs[1].communicate()[1][-2000:]
            time.sleep(0.005)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        _, err = procs[0].communicate(timeout=timeout + 60)
        waited = time.time() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2 lost contact"), err[-2000:]
    assert "--resume" in lines[0] and str(out / "shards") in lines[0]
    assert waited < timeout  # a dead rank is noticed at the next meeting point, well within the timeout
    assert not (out / "head_stats.csv").exists()
    stopped = json.loads((out / "run.json").read_text())
    assert stopped["status"] == "stopped" and "--resume" in stopped["resume"], stopped  # says how to go on
    finished = {int(p.stem.split("-")[1]) for p in (out / "shards").glob("shard-*.npz")}
    assert 1 in finished and len(finished) < 6
    # one process finishes what two began: the missing shards only, and the same file as one process
    df = analyze_dataset(inspector, None, out=out, resume=True, **BATCH_KW)
    run = json.loads((out / "run.json").read_text())
    assert run["shards_resumed"] == len(finished) and run["world_size"] == 1
    assert run["ranks"] == [{"rank": 0, "shards": 6 - len(finished), "rows": 16 * (6 - len(finished)),
                             "analysed": 16 * (6 - len(finished))}]
    assert df.attrs["counts"]["analysed"] == 96
    assert (out / "head_stats.csv").read_bytes() == (one_process / "head_stats.csv").read_bytes()


WORKER = textwrap.dedent("""
    import sys
    from hf_attn_inspect.cli import main
    from hf_attn_inspect.runs.dataset import analyze_dataset
    from hf_attn_inspect.runs.distributed import process_device, processes
    from hf_attn_inspect import AttentionInspector

    a, b, out = sys.argv[1:4]
    code = main(["compare", a, b, "--limit", "200", "--shard-size", "16", "--batch-size", "8", "--quiet",
                 "--out", out + "/compare"])
    inspector = AttentionInspector.from_pretrained(a, device=process_device())
    stats = analyze_dataset(inspector, None, limit=200, shard_size=16, streaming=True, out=out + "/stream")
    me = processes()
    print(f"rank {me.rank} of {me.world_size} on {me.device}: {code} {stats['entropy_mean'].sum():.9g}")
""")


@pytest.mark.heavy
def test_accelerate_launch_compare_cli_and_streaming_api(two_models, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(_free_port()), str(script), *two_models, str(out)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # both ranks end well and return the same table (on the CPU here, no GPU); rank 0 alone reports ...
    lines = sorted(l for l in proc.stdout.splitlines() if l.startswith("rank "))
    assert [l.split(":")[0] for l in lines] == ["rank 0 of 2 on cpu", "rank 1 of 2 on cpu"]
    assert lines[0].split(":")[1] == lines[1].split(":")[1] and lines[0].split(":")[1].split()[0] == "0"
    assert proc.stdout.count("compared 8 heads on 200 texts") == 1
    assert (out / "compare" / "divergence_map.png").exists() and (out / "compare" / "report.md").exists()
    # ... and rank 0 wrote the files one process writes, byte for byte
    one = tmp_path / "one"
    compare_models(*two_models, None, limit=200, shard_size=16, batch_size=8, out=one / "compare", device="cpu")
    inspector = tiny_models_inspector(two_models[0])
    analyze_dataset(inspector, None, limit=200, shard_size=16, out=one / "stream")  # not streamed: the same rows
    assert (out / "compare" / "head_divergence.csv").read_bytes() == (one / "compare" / "head_divergence.csv").read_bytes()
    assert (out / "stream" / "head_stats.csv").read_bytes() == (one / "stream" / "head_stats.csv").read_bytes()
    for kind in ("compare", "stream"):
        run = json.loads((out / kind / "run.json").read_text())
        assert run["world_size"] == 2 and sum(r["rows"] for r in run["ranks"]) == 200
        assert run["shards_total"] == 13
    assert json.loads((out / "stream" / "run.json").read_text())["parameters"]["dataset"]["streaming"] is True


def tiny_models_inspector(path: str):
    from hf_attn_inspect import AttentionInspector

    return AttentionInspector.from_pretrained(path, device="cpu")


RANKS_WORKER = textwrap.dedent("""
    import json, sys, time
    import torch
    from hf_attn_inspect.core.errors import DistributedError
    from hf_attn_inspect.runs.distributed import processes
    from hf_attn_inspect.runs.sharded import ShardStats, run_sharded

    me = processes()
    out = sys.argv[1]

    def compute(start, stop, bar):
        if start == 30:  # shard 3: rank 1's second shard
            raise RuntimeError("boom in the model")
        stats = ShardStats.empty(1, 1, ("row",), ("all",))
        stats.add_values(torch.ones(stop - start, 1, 1, 1), torch.zeros(stop - start, 1, 1, dtype=torch.long))
        stats.rows = stop - start
        return stats

    seen = {}
    try:
        run_sharded(60, 10, compute, out_dir=out, params={"p": 1})
    except Exception as exc:
        seen["failed"] = [type(exc).__name__, str(exc), getattr(exc, "relayed", None)]
    if me.rank == 1:
        time.sleep(60)  # alive but silent: the other must not wait for ever
    started = time.time()
    try:
        me.exchange("hello")
    except DistributedError as exc:
        seen["silent"] = [round(time.time() - started, 1), str(exc)]
    print(json.dumps(seen))
""")


@pytest.mark.heavy
def test_failing_rank_stops_every_rank_and_a_silent_one_times_out(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_WORKER)
    out = tmp_path / "run"
    procs = _ranks([sys.executable, str(script), str(out)], **{TIMEOUT_ENV: "4"})
    try:
        printed, err = procs[0].communicate(timeout=180)
        printed1 = procs[1].communicate(timeout=5)[0] if procs[1].poll() is not None else ""
    finally:
        for p in procs:
            p.kill()
    seen = json.loads(printed.strip().splitlines()[-1])
    # rank 1 raised in shard 3; rank 0 stops after that round and names the rank, the shard and the cause
    kind, message, relayed = seen["failed"]
    assert kind == "DistributedError" and relayed is False, err[-2000:]
    assert message.startswith("rank 1 of 2 failed in shard 3: boom in the model; the finished shards are kept in")
    assert "--resume" in message
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"shard-{i:06d}.npz" for i in (0, 1, 2)]
    # a rank that is alive but silent: the other gives up after the timeout, not never
    waited, message = seen["silent"]
    assert 3.0 <= waited < 30
    assert message.startswith("rank 0 of 2 lost contact") and "4 s (HF_ATTN_INSPECT_TIMEOUT)" in message
    assert printed1 == ""  # rank 1 was still asleep (killed above), so it never saw the timeout itself


@pytest.mark.heavy
def test_importance_on_two_processes_prunes_and_reports_on_rank_0_only(two_models, tmp_path):
    """Issue 23: the shards are shared out, but the pruning curve, the report and the summary come from
    rank 0 alone (rank 1 computes and prints nothing after the shards) and equal one process's."""
    texts = ["The cat sat on the mat.", "Dogs bark at night.", "A bird sang.", "Rain fell all day."]
    args = ["importance", *texts, "--model", two_models[0], "--shard-size", "2", "--prune-step", "0.5",
            "--no-progress"]
    procs = _ranks([sys.executable, "-m", "hf_attn_inspect", *args, "--out", str(tmp_path / "two")])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (OMP_NUM_THREADS=1): the same sums, byte for byte
    try:
        assert main([*args, "--out", str(tmp_path / "one")]) == 0  # one process (this one), meanwhile
    finally:
        torch.set_num_threads(threads)
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert outs[1][0] == "" and outs[0][0].startswith("scored ")
    for name in ("head_importance.csv", "pruning_curve.csv"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["status"] == "finished" and run["pruning_steps"] == 3 and run["shards_total"] == 2


# --------------------------------------------------------------------------- one process
def test_single_process_world():
    me = processes()
    assert (me.rank, me.world_size, me.is_main) == (0, 1, True)
    assert me.exchange({"x": 1}) == [{"x": 1}] and me.share(5) == 5


def _rows_compute(shard_size: int, n_stream: int, calls: list):
    """A stream of ``n_stream`` rows: sentence values = row numbers; shards past the end are empty."""

    def compute(start, stop, bar):
        calls.append((start, stop))
        import torch

        rows = torch.arange(start, min(stop, n_stream), dtype=torch.float32)
        stats = ShardStats.empty(1, 1, ("row",), ("all",))
        stats.add_values(rows[:, None, None, None], torch.zeros(len(rows), 1, 1, dtype=torch.long))
        stats.rows = len(rows)
        return stats

    return compute


@pytest.mark.parametrize("n_stream", [35, 40, 3])
def test_run_sharded_on_a_stream_of_unknown_length(n_stream, tmp_path):
    calls: list = []
    run = run_sharded(None, 10, _rows_compute(10, n_stream, calls), out_dir=tmp_path / "s", params={"p": 1})
    assert run.shards_total == -(-n_stream // 10) and run.counts["rows"] == n_stream == run.total.n
    assert run.total.sums[0, 0, 0] == sum(range(n_stream))
    # computed until a short shard (a stream ending on a shard boundary needs one empty shard to tell)
    assert calls[-1][0] == 10 * (n_stream // 10)
    assert sorted(p.name for p in (tmp_path / "s" / "shards").iterdir()) == [
        f"shard-{i:06d}.npz" for i in range(run.shards_total)]  # nothing saved past the end
    with pytest.raises(InputError, match="no usable text"):
        run_sharded(None, 10, _rows_compute(10, 0, []))


def test_stream_rows_read_forward():
    ds, info = load_dataset_texts(None, streaming=True, limit=10)
    assert info.num_rows is None and info.streaming and info.available_columns == ["text", "label"]
    whole, _ = load_dataset_texts(None, limit=10)
    rows = StreamRows(ds, ["text"], chunk=3)
    assert rows[0:4]["text"] == whole[0:4]["text"]
    assert rows[6:8]["text"] == whole[6:8]["text"]  # rows 4-5 read and dropped
    assert rows[8:12]["text"] == whole[8:10]["text"] and rows[12:16] == {"text": []}
    with pytest.raises(InputError, match="forward only"):
        rows[0:2]


def test_streaming_equals_the_same_rows_read_whole(inspector, tmp_path):
    path = tmp_path / "texts.jsonl"
    texts = sample_sentences(70)
    texts[3] = ""  # skipped and counted the same way in both
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    kw = {"limit": 60, "shard_size": 16, "batch_size": 16}
    whole = analyze_dataset(inspector, str(path), out=tmp_path / "whole", **kw)
    stream = analyze_dataset(inspector, str(path), streaming=True, out=tmp_path / "stream", **kw)
    pd.testing.assert_frame_equal(whole, stream)
    assert (tmp_path / "whole" / "head_stats.csv").read_bytes() == (tmp_path / "stream" / "head_stats.csv").read_bytes()
    assert stream.attrs["counts"] == {"rows": 60, "analysed": 59, "skipped": {"empty": 1, "non_string": 0},
                                      "skipped_total": 1, "truncated": 0}
    # a stopped streaming run resumes from its shards to the same file
    made: list[int] = []

    class Crash(RuntimeError):
        pass

    class CrashingRecorder(SentenceStatsRecorder):
        def __init__(self, *args, **kwargs):
            if crash and len(made) == 2:
                raise Crash("killed")
            super().__init__(*args, **kwargs)
            made.append(1)

    crash = True
    with pytest.raises(Crash):
        analyze_dataset(inspector, str(path), streaming=True, out=tmp_path / "part", probe=CrashingRecorder, **kw)
    crash = False
    analyze_dataset(inspector, str(path), streaming=True, out=tmp_path / "part", probe=CrashingRecorder, resume=True, **kw)
    assert json.loads((tmp_path / "part" / "run.json").read_text())["shards_resumed"] == 2
    assert (tmp_path / "part" / "head_stats.csv").read_bytes() == (tmp_path / "whole" / "head_stats.csv").read_bytes()


def test_streaming_compare_equals_whole(two_models):
    kw = {"limit": 40, "shard_size": 16, "batch_size": 8, "device": "cpu"}
    whole = compare_models(*two_models, None, **kw)
    stream = compare_models(*two_models, None, streaming=True, **kw)
    pd.testing.assert_frame_equal(whole, stream)
    np.testing.assert_array_equal(whole["js_divergence"].to_numpy(), stream["js_divergence"].to_numpy())
    assert stream.attrs["first_text"] == whole.attrs["first_text"]


def test_distributed_error_is_an_attn_inspect_error():
    from hf_attn_inspect import AttnInspectError

    assert issubclass(DistributedError, AttnInspectError) and DistributedError("x").relayed is False
