"""Device check of the memory budget on CUDA: budget source, pooled capture vs streaming, a real CUDA OOM.

Run on a GPU machine: ``PYTHONPATH=$PWD python scripts/check_memory_budget_gpu.py``. Prints one line per check
(a 12,000-token tiny Llama through the pooled capture on the GPU compared with the streaming statistics,
pooled block sums against the full matrix's, and a full capture that runs out of GPU memory under a
per-process memory fraction, which must become one MemoryExhaustedError line).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tiny_models  # noqa: E402
from hf_attn_inspect import AttentionInspector  # noqa: E402
from hf_attn_inspect.capture.pooled import PooledRecorder, pool_blocks  # noqa: E402
from hf_attn_inspect.core.errors import MemoryExhaustedError  # noqa: E402
from hf_attn_inspect.core.memory import memory_budget  # noqa: E402
from hf_attn_inspect.runs.planner import capture_within_budget  # noqa: E402
from hf_attn_inspect.stats.metrics import METRICS  # noqa: E402
from hf_attn_inspect.stats.streaming import streaming_head_metrics  # noqa: E402

WORDS = "the cat sat on a mat and dog ran to park with big red ball in sun".split()


def main() -> int:
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, {torch.cuda.get_device_name(0)}")
    dev = torch.device("cuda")
    print(f"budget on cuda: {memory_budget(device=dev).describe()}")
    tok = tiny_models.tokenizer()
    tok.model_max_length = tiny_models.LONG_POSITIONS
    ins = AttentionInspector(tiny_models.build("llama_long").to(dev), tok)
    text = " ".join(random.Random(1).choice(WORDS) for _ in range(12000 - 2))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    cap = capture_within_budget(ins, text, max_memory="4GB")
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    want = streaming_head_metrics(ins, text)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    diff = np.abs(cap.table[list(METRICS)].to_numpy() - want[list(METRICS)].to_numpy()).max()
    print(f"12k pooled capture on cuda: {t1 - t0:.2f} s (streaming stats {t2 - t1:.2f} s), peak "
          f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, max |metric - streaming| = {diff:.2e}; {cap.kept()}")
    short = " ".join(random.Random(2).choice(WORDS) for _ in range(500))
    batch = ins.encode([short])
    recorder = PooledRecorder(full={("self", i): list(range(4)) for i in range(2)}, max_blocks=37, chunk_bytes=4 * 502 * 4 * 50)
    ins.run(batch, recorder)
    full = torch.stack([recorder.weights["self"][i][0] for i in range(2)])
    pooled = torch.stack([recorder.pooled["self"][i][0] for i in range(2)])
    ref = ins(short).attentions
    print(f"pooled vs full block sums on cuda: {(pool_blocks(full, *recorder.edges['self']) - pooled).abs().max():.2e}; "
          f"chunked weights vs reference: {(full - ref).abs().max():.2e}")
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(0.03)
    try:
        ins(text, max_memory="1TB")
        print("FAIL: no out-of-memory error")
        return 1
    except MemoryExhaustedError as err:
        print(f"real CUDA OOM -> MemoryExhaustedError: {err}")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
