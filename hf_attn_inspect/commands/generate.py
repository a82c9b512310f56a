"""``hf-attn-inspect generate``: generate from a prompt and show what each generated token looked at."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .options import add_memory_option, add_model_options, add_output_options, examples, load_inspector
from ..core.errors import InputError
from ..core.files import check_output_dir, check_replaceable, record_outputs
from ..core.sampling import check_generation_values

if TYPE_CHECKING:
    from ..capture.result import GenerationResult

#: The files the command writes into --out.
FILES = ("generation.png", "tokens.csv", "attention.safetensors", "generation.html")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate from a prompt and capture what each generated token looked at",
        description="Generate up to N tokens from PROMPT with a causal LM or an encoder-decoder model (greedy, or "
        "sampled with --sample) and capture every generated token's attention as the model computed it (KV cache "
        "on). Writes generation.png (rows: generated tokens, columns: prompt | generated, probability beside each "
        "row), tokens.csv (position, token, source, probability, top alternatives), attention.safetensors (the "
        "result, AttentionResult.load reads it) and generation.html (the explorer's generation mode).",
        epilog=examples(
            'hf-attn-inspect generate "The capital of France is" --model gpt2 --max-new-tokens 20 --out gen',
            'hf-attn-inspect generate "Once upon a time" --model ./my-lm --sample --seed 0 --top-p 0.9 --layers 10 11',
        ),
    )
    p.add_argument("prompt", metavar="PROMPT", help="the prompt (the source text for encoder-decoder models)")
    add_model_options(p)
    next(a for a in p._actions if "--model" in a.option_strings).help = (
        "Hub name or local directory of a causal LM (GPT-2, Llama...) or an encoder-decoder model (BART, T5...); "
        "required: the embedded default MiniLM cannot generate")
    p.add_argument("--max-new-tokens", type=int, default=20, metavar="N", help="tokens to generate (default 20)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--seed", type=int, default=None, help="random seed of --sample (reproducible output)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (with --sample)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1] (with --sample)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the K most probable tokens (with --sample)")
    p.add_argument("--alternatives", type=int, default=5, metavar="K",
                   help="most probable tokens listed per step (default 5)")
    p.add_argument("--layers", type=int, nargs="+", default=None, metavar="L",
                   help="keep only these layers (0-based; default all)")
    p.add_argument("--layer", type=int, default=None, help="layer of the figure (default: the last kept layer)")
    p.add_argument("--head", type=int, default=None, help="head of the figure (default: the average of the heads)")
    p.add_argument("--out", default="generation_out", help="output directory (default ./generation_out)")
    add_output_options(p)
    add_memory_option(p)
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> None:
    """The checks that need no model: a prompt, a model, and flag values ``generate`` accepts."""
    if not args.prompt.strip():
        raise InputError("prompt is empty or blank")
    if args.model is None:
        raise InputError("generate needs a generative model and the embedded default (MiniLM) is not one; pass "
                         "--model with a causal LM or encoder-decoder model, e.g. --model gpt2 or a local directory")
    check_generation_values(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.alternatives, flags=True)
    sampling = {"--seed": args.seed, "--temperature": args.temperature, "--top-p": args.top_p, "--top-k": args.top_k}
    given = [flag for flag, value in sampling.items() if value is not None]
    if given and not args.sample:
        raise InputError(f"{', '.join(given)} only apply with --sample (greedy decoding draws nothing)")
    if args.layer is not None and args.layers is not None and args.layer not in args.layers:
        raise InputError(f"--layer {args.layer} is not among --layers {' '.join(map(str, args.layers))}")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    out = check_output_dir(args.out)
    check_replaceable(out, FILES, overwrite=args.overwrite)

    from ..core.files import files_kept_on_success

    from ..runs.generation import generate_within_budget

    inspector = load_inspector(args)
    result = generate_within_budget(
        inspector, args.prompt, max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, alternatives=args.alternatives,
        layers=args.layers, max_memory=args.max_memory,
    )
    if args.head is not None:
        result.head_index(args.head)  # a clear error naming the valid heads
    if args.layer is not None:
        result.layer_index(args.layer)
    with files_kept_on_success(out):  # all or nothing
        written = _write(result, out, args)
    print(f"model: {inspector.name}")
    print(f"prompt ({result.prompt_length} tokens): {args.prompt}")
    print(f"generated ({result.num_generated} tokens): {result.generated_text}")
    if result.row_stats:
        print(f"long generation: full rows of layers {' '.join(map(str, result.layer_ids))} fit the memory budget; "
              f"row statistics of every layer are in attention.safetensors (row_stats)")
    for path in written:
        print(f"wrote {path}")
    return 0


def _write(result: "GenerationResult", out: Path, args: argparse.Namespace) -> list[Path]:
    from ..core.files import atomic_write
    from ..views.explorer import write_explorer
    from ..views.generation import generation_table, plot_generation
    from ..views.plotting import save_figure

    record_outputs(out, FILES)
    ax = plot_generation(result, args.layer, args.head)
    written = [save_figure(ax.figure, out / "generation.png")]
    table = generation_table(result)
    written.append(atomic_write(out / "tokens.csv", lambda fh: table.to_csv(fh, index=False)))
    written.append(result.save(out / "attention.safetensors"))
    written.append(write_explorer(result, out / "generation.html"))
    return written
