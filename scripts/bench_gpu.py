#!/usr/bin/env python
"""Speed of streaming attention statistics, every figure a ratio measured side by side in this run.

Part A -- whole-model analysis: a bert-base-shaped model (random weights, 12 layers x 12 heads, hidden
768), bf16, B=64 x T=128 and B=16 x T=512. Throughput of the statistics analysis (every per-head metric
of every layer through :class:`hf_attn_inspect.stats.streaming.StreamingStatsProbe`, reduced per sentence) and
of the materialising analysis (full weights + ``sentence_metrics``), both relative to the model's plain
sdpa forward pass. Target: statistics >= 0.8x the plain forward.

Part B -- one causal attention layer, 32 heads x 128 dims, bf16, T = 4k, 16k, 32k: time of
:func:`hf_attn_inspect.core.kernels.attention_row_stats` relative to flash SDPA on the same layer, and peak
extra GPU memory of each. Target: <= 2x at 32k, memory O(T).

``--smoke`` runs a reduced version on CPU (tiny shapes, float32) so the script is exercised by the tests
and cannot rot; its numbers mean nothing for the GPU targets.

    python scripts/bench_gpu.py            # on a CUDA machine
    python scripts/bench_gpu.py --smoke    # anywhere, seconds
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
def part_a(device: torch.device, dtype: torch.dtype, smoke: bool, repeats: int) -> None:
    import transformers as tf

    from hf_attn_inspect import AttentionInspector
    from hf_attn_inspect.capture.inputs import Batch, KeyMasks
    from hf_attn_inspect.capture.interface import WeightsProbe
    from hf_attn_inspect.stats.metrics import reduce_rows, sentence_metrics
    from hf_attn_inspect.stats.streaming import StreamingStatsProbe

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
    print(f"\nA. bert-base-shaped model, {cfg.num_hidden_layers} layers x {cfg.num_attention_heads} heads, "
          f"{str(dtype).replace('torch.', '')}: throughput relative to the plain sdpa forward (higher is better)")
    for b, t in shapes:
        ids = torch.randint(1000, cfg.vocab_size, (b, t), generator=torch.Generator().manual_seed(b * t))
        mask = torch.ones(b, t, dtype=torch.long)
        mask[b // 2 :, t - t // 4 :] = 0  # some padding, as in a real batch
        batch = Batch(inputs={"input_ids": ids, "attention_mask": mask}, texts=[""] * b)
        valid = mask.bool()
        masks = batch.masks("self")
        dev_inputs = {k: v.to(device) for k, v in batch.inputs.items()}

        def plain() -> None:
            with torch.no_grad():
                model(**dev_inputs)

        def streaming() -> None:
            probe = StreamingStatsProbe({"self": KeyMasks(masks.valid.to(device), masks.special.to(device),
                                                          masks.punctuation.to(device))}, q_tile=t, k_tile=t)
            inspector.run(batch, probe)
            rows = probe.stacked("self")
            reduce_rows(rows, valid, causal=False)

        def materialised() -> None:
            probe = WeightsProbe()
            inspector.run(batch, probe)
            w = torch.stack([probe.weights["self"][i] for i in sorted(probe.weights["self"])], 1)
            sentence_metrics(w, valid)

        t_plain = timed(plain, device, repeats)
        t_stream = timed(streaming, device, repeats)
        t_mat = timed(materialised, device, max(1, repeats // 2))
        print(f"   B={b:3d} x T={t:4d}: plain {b / t_plain:9.1f} seq/s | statistics {t_plain / t_stream:5.2f}x "
              f"(ratio, target >= 0.8) | materialised weights {t_plain / t_mat:5.2f}x (ratio)")


# ------------------------------------------------------------------------------------- part B
def part_b(device: torch.device, dtype: torch.dtype, smoke: bool, repeats: int) -> None:
    from hf_attn_inspect.core.kernels import attention_row_stats
    from hf_attn_inspect.stats.streaming import DISTANCE_EDGES

    heads, dim = (4, 16) if smoke else (32, 128)
    lengths = [128, 256] if smoke else [4096, 16384, 32768]
    q_tile, k_tile = (64, 128) if smoke or device.type != "cuda" else (1024, 2048)
    print(f"\nB. one causal layer, {heads} heads x {dim} dims, {str(dtype).replace('torch.', '')}: streaming statistics "
          f"vs flash SDPA forward (time ratio, lower is better; tiles {q_tile} x {k_tile})")
    for t in lengths:
        g = torch.Generator(device="cpu").manual_seed(t)
        q, k, v = (torch.randn(1, heads, t, dim, generator=g).to(device=device, dtype=dtype) for _ in range(3))

        def flash() -> None:
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def stats() -> None:
            attention_row_stats(q, k, causal=True, distance_edges=DISTANCE_EDGES, q_tile=q_tile, k_tile=k_tile)

        t_flash = timed(flash, device, repeats)
        t_stats = timed(stats, device, max(1, repeats // 2))
        m_flash, label = peak_bytes(flash, device)
        m_stats, _ = peak_bytes(stats, device)
        full = heads * t * t * 4
        print(f"   T={t:6d}: flash {t_flash * 1e3:9.2f} ms | statistics {t_stats * 1e3:10.2f} ms = {t_stats / t_flash:7.2f}x "
              f"(ratio, target <= 2 at 32k) | {label}: flash {gib(m_flash)}, statistics {gib(m_stats)} "
              f"(one float32 [heads, T, T] would be {gib(full)}; ratio {m_stats / full:.4f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that only proves the script works")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per figure (median)")
    parser.add_argument("--part", choices=["a", "b", "all"], default="all")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    if device.type != "cuda" and not args.smoke:
        print("no CUDA device: run with --smoke for the reduced CPU check, or on a GPU machine", file=sys.stderr)
        return 2
    dtype = torch.float32 if args.smoke else torch.bfloat16
    repeats = args.repeats or (2 if args.smoke else 5)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"device: {name} ({device}); torch {torch.__version__}; statistics backend: pytorch (tiled reference; "
          f"no fused Triton kernel yet){'; SMOKE run (numbers are not the GPU targets)' if args.smoke else ''}")
    if args.part in ("a", "all"):
        part_a(device, dtype, args.smoke, repeats)
    if args.part in ("b", "all"):
        part_b(device, dtype, args.smoke, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
