#!/usr/bin/env python
"""Speed of attention statistics, every figure a ratio measured side by side in this run.

Part A -- whole-model analysis: a bert-base-shaped model (random weights, 12 layers x 12 heads, hidden
768), bf16, B=64 x T=128 and B=16 x T=512. Throughput, relative to the model's plain sdpa forward pass, of
the statistics recorder (:class:`hf_attn_inspect.stats.streaming.StreamingStatsRecorder`, every per-head metric of
every layer reduced per sentence on the device, one transfer per batch) with the fused Triton kernel (the
CUDA default) and with the tiled PyTorch path (``HF_ATTN_INSPECT_FUSED=0``), of the ``batch`` command's probe
(:class:`hf_attn_inspect.runs.dataset.SentenceStatsRecorder`, fused on CUDA) and of the materialising analysis
(full weights + ``sentence_metrics``). Target: statistics >= 0.8x the plain forward.

Part B -- one causal attention layer, 32 heads x 128 dims, bf16, T = 4k, 16k, 32k: time of the fused
kernel (:func:`hf_attn_inspect.core.kernels.fused_attention_stats`: output + every row statistic incl. the
distance buckets) and of the tiled PyTorch statistics (:func:`~hf_attn_inspect.core.kernels.attention_row_stats`)
relative to flash SDPA (output only) on the same layer, and peak extra GPU memory of each. Target: fused
<= 2x at 32k, memory O(T).

``--profile`` prints a ``torch.profiler`` summary (top operations by device time) of one part-A batch of the
statistics probe. ``--cpu`` prints, on the CPU, the time of ``attention_row_stats(q, k, causal=True)``
relative to ``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` for one layer of 8 heads x 64 dims,
float32, T=2048 and 8192 (interleaved runs, medians; target <= 2.0x at 8192).

``--smoke`` runs a reduced version of parts A and B on CPU (tiny shapes, float32) so the script is exercised
by the tests and cannot rot; its numbers mean nothing for the GPU targets.

    python scripts/bench_gpu.py              # on a CUDA machine: parts A and B
    python scripts/bench_gpu.py --profile    # on a CUDA machine: profiler table of one part-A batch
    python scripts/bench_gpu.py --cpu        # anywhere: the CPU ratio
    python scripts/bench_gpu.py --smoke      # anywhere, seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hf_attn_inspect.core.kernels import FUSED_ENV, fused_available  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402


class _Largest(TorchDispatchMode):
    """CPU stand-in for peak memory: the largest tensor (bytes) any operation creates."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.bytes = max(self.bytes, t.numel() * t.element_size())
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def peak_bytes(fn: Callable[[], object], device: torch.device) -> tuple[int, str]:
    """Peak extra memory of one call: CUDA allocator peak, or the largest CPU tensor (labelled)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base, "peak extra GPU memory"
    tracker = _Largest()
    with tracker:
        fn()
    return tracker.bytes, "largest tensor"


def gib(n: int) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


# ------------------------------------------------------------------------------------- part A
class _Fused:
    """Context: the fused kernel on (default where it can run) or off (``HF_ATTN_INSPECT_FUSED=0``)."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        self.before = os.environ.get(FUSED_ENV)
        if self.on:
            os.environ.pop(FUSED_ENV, None)
        else:
            os.environ[FUSED_ENV] = "0"

    def __exit__(self, *exc: object) -> None:
        if self.before is None:
            os.environ.pop(FUSED_ENV, None)
        else:
            os.environ[FUSED_ENV] = self.before


def _part_a_setup(device: torch.device, dtype: torch.dtype, smoke: bool):
    import transformers as tf

    from hf_attn_inspect import AttentionInspector

    if smoke:
        cfg = tf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
        shapes = [(4, 32), (2, 64)]
    else:
        cfg = tf.BertConfig()  # bert-base: 12 layers, 12 heads, hidden 768
        shapes = [(64, 128), (16, 512)]
    torch.manual_seed(0)
    model = tf.BertModel(cfg).to(device=device, dtype=dtype).eval()
    model.config._attn_implementation_internal = "sdpa"
    inspector = AttentionInspector(model, tokenizer=None, name="bert-base-shaped (random)")
    return cfg, shapes, model, inspector


def _part_a_batch(cfg, b: int, t: int):
    from hf_attn_inspect.capture.inputs import Batch

    ids = torch.randint(1000, cfg.vocab_size, (b, t), generator=torch.Generator().manual_seed(b * t))
    mask = torch.ones(b, t, dtype=torch.long)
    mask[b // 2 :, t - t // 4 :] = 0  # some padding, as in a real batch
    return Batch(inputs={"input_ids": ids, "attention_mask": mask}, texts=[""] * b)


def _statistics_run(inspector, batch) -> Callable[[], object]:
    """One batch through the statistics recorder: per-sentence metrics of every layer, on the CPU at the end."""
    from hf_attn_inspect.stats.streaming import StreamingStatsRecorder

    masks = batch.stack_masks()

    def run() -> object:
        recorder = StreamingStatsRecorder(masks, reduce=True, q_tile=batch.inputs["input_ids"].shape[1],
                                         k_tile=batch.inputs["input_ids"].shape[1])
        inspector.run(batch, recorder)  # run() ends with recorder.finish(): one transfer
        return recorder.metrics

    return run


def part_a(device: torch.device, dtype: torch.dtype, smoke: bool, repeats: int) -> None:
    from hf_attn_inspect.capture.recorders import WeightsRecorder
    from hf_attn_inspect.runs.dataset import SentenceStatsRecorder
    from hf_attn_inspect.stats.metrics import sentence_metrics

    cfg, shapes, model, inspector = _part_a_setup(device, dtype, smoke)
    fused_ok = fused_available(device)
    print(f"\nA. bert-base-shaped model, {cfg.num_hidden_layers} layers x {cfg.num_attention_heads} heads, "
          f"{str(dtype).replace('torch.', '')}: throughput relative to the plain sdpa forward (higher is better; "
          f"fused kernel {'on' if fused_ok else 'not available here'})")
    for b, t in shapes:
        batch = _part_a_batch(cfg, b, t)
        valid = batch.valid
        dev_inputs = {k: v.to(device) for k, v in batch.inputs.items()}
        m = batch.masks("self")
        stats = _statistics_run(inspector, batch)

        def plain() -> None:
            with torch.no_grad():
                model(**dev_inputs)

        def batch_probe() -> None:
            probe = SentenceStatsRecorder(m.valid, m.special, m.punctuation)
            inspector.run(batch, probe)
            probe.per_sentence()

        def materialised() -> None:
            probe = WeightsRecorder()
            inspector.run(batch, probe)
            w = torch.stack([probe.weights["self"][i] for i in sorted(probe.weights["self"])], 1)
            sentence_metrics(w, valid)

        with _Fused(True):
            t_plain = timed(plain, device, repeats)
            t_fused = timed(stats, device, repeats) if fused_ok else float("nan")
            t_batch = timed(batch_probe, device, repeats) if fused_ok else float("nan")
        with _Fused(False):
            t_tiled = timed(stats, device, repeats)
            t_mat = timed(materialised, device, max(1, repeats // 2))
        print(f"   B={b:3d} x T={t:4d}: plain {b / t_plain:9.1f} seq/s | statistics fused {t_plain / t_fused:5.2f}x "
              f"(ratio, target >= 0.8) | statistics tiled PyTorch {t_plain / t_tiled:5.2f}x | batch probe fused "
              f"{t_plain / t_batch:5.2f}x | materialised weights {t_plain / t_mat:5.2f}x (ratio)")


def profile_a(device: torch.device, dtype: torch.dtype, smoke: bool, rows: int = 25) -> None:
    """torch.profiler summary of one part-A batch (the first shape) of the statistics probe."""
    from torch.profiler import ProfilerActivity, profile

    cfg, shapes, _, inspector = _part_a_setup(device, dtype, smoke)
    b, t = shapes[0]
    run = _statistics_run(inspector, _part_a_batch(cfg, b, t))
    run()  # warm-up (kernel compilation)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        sync(device)
    avg = prof.key_averages()
    n_ops = sum(e.count for e in avg if e.key.startswith("aten::"))
    if device.type == "cuda":
        try:
            table = avg.table(sort_by="device_time_total", row_limit=rows)
        except (AttributeError, KeyError, ValueError):  # older torch names it cuda_time_total
            table = avg.table(sort_by="cuda_time_total", row_limit=rows)
    else:
        table = avg.table(sort_by="cpu_time_total", row_limit=rows)
    print(f"\nProfile: one batch B={b} x T={t} of the statistics probe (fused kernel "
          f"{'on' if fused_available(device) else 'off'}), top {rows} operations by "
          f"{'device' if device.type == 'cuda' else 'CPU'} time; {n_ops} aten operations in the batch "
          f"(the model's own included)")
    print(table)


# ------------------------------------------------------------------------------------- part B
def part_b(device: torch.device, dtype: torch.dtype, smoke: bool, repeats: int) -> None:
    from hf_attn_inspect.core.kernels import attention_row_stats, fused_attention_stats
    from hf_attn_inspect.stats.streaming import DISTANCE_EDGES

    heads, dim = (4, 16) if smoke else (32, 128)
    lengths = [128, 256] if smoke else [4096, 16384, 32768]
    q_tile, k_tile = (64, 128) if smoke or device.type != "cuda" else (1024, 2048)
    fused_ok = fused_available(device)
    print(f"\nB. one causal layer, {heads} heads x {dim} dims, {str(dtype).replace('torch.', '')}: fused kernel "
          f"(output + statistics) and tiled PyTorch statistics vs flash SDPA forward (time ratio, lower is better; "
          f"PyTorch tiles {q_tile} x {k_tile}; fused kernel {'on' if fused_ok else 'not available here'})")
    for t in lengths:
        g = torch.Generator(device="cpu").manual_seed(t)
        q, k, v = (torch.randn(1, heads, t, dim, generator=g).to(device=device, dtype=dtype) for _ in range(3))

        def flash() -> None:
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def fused() -> None:
            fused_attention_stats(q, k, v, causal=True, distance_edges=DISTANCE_EDGES)

        def stats() -> None:
            attention_row_stats(q, k, causal=True, distance_edges=DISTANCE_EDGES, q_tile=q_tile, k_tile=k_tile)

        t_flash = timed(flash, device, repeats)
        t_fused = timed(fused, device, repeats) if fused_ok else float("nan")
        t_stats = timed(stats, device, max(1, repeats // 3))
        m_flash, label = peak_bytes(flash, device)
        m_fused = peak_bytes(fused, device)[0] if fused_ok else 0
        m_stats, _ = peak_bytes(stats, device)
        full = heads * t * t * 4
        print(f"   T={t:6d}: flash {t_flash * 1e3:9.2f} ms | fused {t_fused * 1e3:9.2f} ms = {t_fused / t_flash:6.2f}x "
              f"(ratio, target <= 2 at 32k) | tiled statistics {t_stats * 1e3:10.2f} ms = {t_stats / t_flash:7.2f}x "
              f"(ratio) | {label}: flash {gib(m_flash)}, fused {gib(m_fused) if fused_ok else 'n/a'}, tiled "
              f"{gib(m_stats)} (one float32 [heads, T, T] would be {gib(full)}; tiled ratio {m_stats / full:.4f})")


# ------------------------------------------------------------------------------------- CPU part
def part_cpu(repeats: int, lengths: tuple[int, ...] = (2048, 8192)) -> None:
    """``attention_row_stats`` vs CPU sdpa, one causal layer 8 x 64 float32; interleaved runs, medians."""
    from hf_attn_inspect.core.kernels import attention_row_stats

    heads, dim = 8, 64
    print(f"\nCPU. one causal layer, {heads} heads x {dim} dims, float32, {torch.get_num_threads()} threads: "
          f"attention_row_stats(q, k, causal=True) vs F.scaled_dot_product_attention(q, k, v, is_causal=True) "
          f"(time ratio, lower is better; target <= 2.0 at 8192; {repeats} interleaved runs, medians)")
    for t in lengths:
        g = torch.Generator().manual_seed(t)
        q, k, v = (torch.randn(1, heads, t, dim, generator=g) for _ in range(3))
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
        attention_row_stats(q, k, causal=True)
        ts, tr = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v, is_causal=True)
            ts.append(time.perf_counter() - start)
            start = time.perf_counter()
            attention_row_stats(q, k, causal=True)
            tr.append(time.perf_counter() - start)
        med_s, med_r = sorted(ts)[len(ts) // 2], sorted(tr)[len(tr) // 2]
        print(f"   T={t:5d}: sdpa {med_s * 1e3:9.1f} ms | statistics {med_r * 1e3:9.1f} ms = {med_r / med_s:5.2f}x "
              f"(ratio, target <= 2.0 at 8192)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that only proves the script works")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per figure (median)")
    parser.add_argument("--part", choices=["a", "b", "all"], default="all")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of one part-A batch (only)")
    parser.add_argument("--cpu", action="store_true", help="only the CPU part: attention_row_stats vs CPU sdpa")
    args = parser.parse_args(argv)
    if args.cpu:
        print(f"device: {platform.processor() or platform.machine()} (cpu, {os.cpu_count()} cores); "
              f"torch {torch.__version__}")
        part_cpu(args.repeats or 5)
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    if device.type != "cuda" and not args.smoke:
        print("no CUDA device: run with --smoke for the reduced CPU check, --cpu for the CPU part, or on a GPU "
              "machine", file=sys.stderr)
        return 2
    dtype = torch.float32 if args.smoke else torch.bfloat16
    repeats = args.repeats or (2 if args.smoke else 5)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = "not installed"
    backend = "fused Triton kernel" if fused_available(device) else "tiled PyTorch (fused kernel not available here)"
    print(f"device: {name} ({device}); torch {torch.__version__}; triton {triton_version}; statistics backend: "
          f"{backend}{'; SMOKE run (numbers are not the GPU targets)' if args.smoke else ''}")
    if args.profile:
        profile_a(device, dtype, args.smoke)
        return 0
    if args.part in ("a", "all"):
        part_a(device, dtype, args.smoke, repeats)
    if args.part in ("b", "all"):
        part_b(device, dtype, args.smoke, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
