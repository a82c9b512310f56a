"""Generation benchmark: what capturing every generated token's attention costs over plain ``generate``.

Times a greedy generation of N tokens (default 200, ``min_new_tokens`` = N so both runs make the same number
of steps) with ``model.generate`` alone and with ``inspector.generate`` (weights of every layer and head kept,
the last token's row included), best of R runs each, and prints both times and their ratio (target: at most
1.5x). Default model: a GPT-2 of 4 layers x 4 heads, 128 wide, random weights (offline); ``--model`` takes a
Hub name or local directory. Usage:
    python scripts/bench_generate.py [--model M] [--tokens 200] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _model(name: str | None, device: str):
    import torch
    import transformers as tf

    import tiny_models
    from hf_attn_inspect import AttentionInspector

    if name:
        return AttentionInspector.from_pretrained(name, device=device)
    torch.manual_seed(0)
    cfg = tf.GPT2Config(vocab_size=30522, n_embd=128, n_layer=4, n_head=4, n_positions=512, bos_token_id=101,
                        eos_token_id=102)
    return AttentionInspector(tf.GPT2LMHeadModel(cfg).to(device).eval(), tiny_models.tokenizer(), name="gpt2-4x4-random")


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import torch

    insp = _model(args.model, args.device)
    prompt = "The history of the city begins with a small settlement on the river"
    enc = insp.tokenizer(prompt, return_tensors="pt", return_token_type_ids=False).to(insp.device)
    pad = insp.tokenizer.pad_token_id if insp.tokenizer.pad_token_id is not None else insp.tokenizer.eos_token_id
    n = args.tokens

    def plain() -> None:
        with torch.no_grad():
            insp.model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad)

    def captured() -> None:
        insp.generate(prompt, max_new_tokens=n, min_new_tokens=n)

    plain(), captured()  # warm up
    t_plain = _best(plain, args.repeats)
    t_capture = _best(captured, args.repeats)
    res = insp.generate(prompt, max_new_tokens=n, min_new_tokens=n)
    print(f"model: {insp.name} ({insp.num_layers} layers x {insp.num_heads} heads), device {insp.device}")
    print(f"greedy generation of {res.num_generated} tokens after a {res.prompt_length}-token prompt")
    print(f"generate without capture: {t_plain:.3f} s")
    print(f"generate with capture:    {t_capture:.3f} s  (weights {tuple(res.attentions.shape)})")
    print(f"ratio: {t_capture / t_plain:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
