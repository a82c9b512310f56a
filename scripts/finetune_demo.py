#!/usr/bin/env python
"""Fine-tune the embedded model on the shipped labelled sample and show where its attention moved.

Offline and CPU-friendly (a few minutes): all-MiniLM-L6-v2 (6 layers x 12 heads) gets a sentiment
classification head and is trained for ``--steps`` steps on ``hf_attn_inspect/data/sentences.csv`` (text,
label), with a plain PyTorch loop watched by :class:`hf_attn_inspect.AttentionMonitor`. Writes to ``--out``:

- ``before/`` and ``after/``: the checkpoints (model + tokenizer) before and after fine-tuning;
- ``compare/``: ``hf-attn-inspect compare before after`` on the sample (head_divergence.csv, figures, report.md);
- ``attention_stats.jsonl``: the monitor's log every ``--every`` steps; ``trends_entropy.png`` (per layer),
  ``trends_top_heads.png`` (the most changed heads) and ``top_head.gif`` (the most changed head's attention
  on the probe sentence across training).

Run: ``python scripts/finetune_demo.py --out finetune_out`` (``--steps 300`` for a longer run).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

PROBE_TEXTS = [
    "The film was a wonderful surprise, funny and warm.",
    "I hated every minute of this boring, clumsy story.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="finetune_out", help="output directory (default finetune_out)")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    parser.add_argument("--every", type=int, default=20, help="monitor every N steps (default 20)")
    parser.add_argument("--compare-limit", type=int, default=96, help="sentences used by compare (default 96)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from hf_attn_inspect import AttentionMonitor, animate_attention, default_model_path, plot_training_trends
    from hf_attn_inspect.capture.inspector import resolve_inspector
    from hf_attn_inspect.runs.compare import compare_models
    from hf_attn_inspect.runs.sources import load_dataset_texts
    from hf_attn_inspect.views.comparison import describe_changes, write_comparison
    from hf_attn_inspect.views.plotting import save_figure

    hf_logging.set_verbosity_error()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            print(f"error: {out} is not empty; pass --overwrite or choose another --out", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    ds, _ = load_dataset_texts(None)  # the shipped sample: columns text, label
    rows = [(t, int(y)) for t, y in zip(ds["text"], ds["label"]) if isinstance(t, str) and t.strip()]
    random.shuffle(rows)
    cut = len(rows) * 4 // 5
    train, test = rows[:cut], rows[cut:]
    print(f"data: {len(train)} training and {len(test)} held-out sentences from the shipped sample")

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    model = AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2)
    # The word embeddings (half of the 22M parameters) stay frozen: it halves the cost of a step, and what we
    # watch is the attention layers, which train as usual.
    model.get_input_embeddings().weight.requires_grad_(False)
    model.save_pretrained(out / "before")
    tokenizer.save_pretrained(out / "before")

    def accuracy() -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(test), 64):
                chunk = test[i : i + 64]
                enc = tokenizer([t for t, _ in chunk], padding=True, truncation=True, max_length=64, return_tensors="pt")
                pred = model(**enc).logits.argmax(-1)
                correct += int((pred == torch.tensor([y for _, y in chunk])).sum())
        return correct / max(1, len(test))

    before_acc = accuracy()
    monitor = AttentionMonitor(model, tokenizer, PROBE_TEXTS, log_path=out / "attention_stats.jsonl", store_heads="all")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / args.steps))
    monitor.record(0)
    start = time.time()
    model.train()
    order: list[int] = []
    for step in range(1, args.steps + 1):
        if len(order) < args.batch_size:
            order += random.sample(range(len(train)), len(train))
        batch = [train[order.pop()] for _ in range(args.batch_size)]
        enc = tokenizer([t for t, _ in batch], padding=True, truncation=True, max_length=64, return_tensors="pt")
        output = model(**enc, labels=torch.tensor([y for _, y in batch]))
        output.loss.backward()
        loss = output.loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % args.every == 0 or step == args.steps:
            record = monitor.record(step, loss=loss)
            note = f"  {'; '.join(record['warnings'])}" if record["warnings"] else ""
            print(f"step {step:4d}  loss {loss:.3f}  ({time.time() - start:.0f} s){note}", flush=True)
    after_acc = accuracy()
    model.save_pretrained(out / "after")
    tokenizer.save_pretrained(out / "after")
    print(f"held-out accuracy: {before_acc:.2f} before, {after_acc:.2f} after fine-tuning")

    before = resolve_inspector(out / "before", device="cpu")
    after = resolve_inspector(out / "after", device="cpu")
    df = compare_models(before, after, None, out=out / "compare", limit=args.compare_limit)
    write_comparison(out / "compare", df, before, after, top=4)
    top = df.head(4)
    heads = [(int(r.layer), int(r.head)) for r in top.itertuples()]

    save_figure(plot_training_trends(monitor, "entropy").figure, out / "trends_entropy.png", dpi=110)
    save_figure(plot_training_trends(monitor, "max_weight", heads=heads).figure, out / "trends_top_heads.png", dpi=110)
    written = animate_attention(monitor, heads[0][0], heads[0][1], out / "top_head.gif")

    print(f"\nwhere attention moved (JS divergence before -> after, nats, on {df.attrs['n_sentences']} sentences):")
    for _, row in top.iterrows():
        print(f"  layer {int(row['layer'])} head {int(row['head'])}: {row['js_divergence']:.4f}  "
              + "; ".join(describe_changes(row, df, n=2)))
    per_layer = df.groupby("layer")["js_divergence"].mean()
    print("  mean per layer: " + ", ".join(f"L{l} {v:.4f}" for l, v in per_layer.items()))
    print(f"\nwrote {out}/before, {out}/after, {out}/compare/report.md, {out}/attention_stats.jsonl, "
          f"trends_entropy.png, trends_top_heads.png, {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
