"""Run the commands on fixed inputs and check that two runs wrote byte-identical files (issue 19).

``python3 scripts/check_outputs_identical.py write DIR`` runs ``inspect``, ``view``, ``batch``, ``compare``,
``long``, ``importance`` (and prints of ``verify`` and ``debug``) on small fixed inputs that it writes itself
(``DIR/_inputs``: a 24-row CSV with ``text``, ``pair`` and ``label`` columns, a text-file dataset, a ~600-token
and a ~1,500-token text), with the embedded model (no ``--model``) and three tiny models it builds with fixed
seeds (a copy of the embedded model with deterministically perturbed weights, a tiny BERT classifier, a tiny
long-context Llama). Each command writes its folder ``DIR/<name>``; its stdout goes to ``DIR/<name>.stdout``,
its stderr to ``DIR/<name>.stderr`` and its exit status to ``DIR/<name>.rc``. Every command runs with
``DIR`` as working directory and relative paths, so no absolute path reaches an output. The tiny models are
saved under ``DIR/_models`` while the commands run and removed afterwards (they are inputs, not outputs).

``python3 scripts/check_outputs_identical.py compare DIR_A DIR_B`` compares every file of the two trees byte by
byte and exits 1 with a list of the differences (missing files included; PNG, SVG and HTML differences are
listed under their own heading). Exclusions, the only ones:

* ``*.stderr``: progress bars, warnings and timings, not a written output (listed as a note when they differ).
* JSON files (``run.json``, ``metrics.json``, ...): compared after dropping, at any depth, the keys
  ``finished_at`` and ``started_at`` (timestamps), ``elapsed_s``, ``sentences_per_s``, ``texts_per_s``,
  ``rows_per_s``, ``seconds`` and any key ending in ``_per_s`` or ``_seconds`` (durations and rates) and
  ``versions`` (package versions) and ``fingerprint`` (the ``datasets`` library's fingerprint of a local
  dataset file, a hash of its absolute path and modification time). Everything else, parameters and counts
  included, must be identical.
* SVG files: the ``<dc:date>...</dc:date>`` element that matplotlib writes (the time of the run) is removed
  before comparing. The ids matplotlib gives SVG elements are random unless ``svg.hashsalt`` is set, which no
  command option does: the runs set it through a ``matplotlibrc`` (``DIR/_inputs/matplotlibrc``, named by
  the ``MATPLOTLIBRC`` environment variable) holding only ``svg.hashsalt``.
* PNG files: compared byte by byte (matplotlib writes no time into PNGs); when the bytes differ the decoded
  pixels are compared with PIL as well and the report says whether only the encoding or the pixels differ.

The runs use ``OMP_NUM_THREADS=2``, ``MPLBACKEND=Agg``, ``PYTHONHASHSEED=0``, offline Hugging Face and the CPU,
and take about two to three minutes on two cores.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: JSON keys dropped before comparing (timestamps, durations, versions); plus suffixes below.
DROPPED_KEYS = {"finished_at", "started_at", "elapsed_s", "sentences_per_s", "texts_per_s", "rows_per_s",
                "seconds", "versions", "fingerprint"}
DROPPED_SUFFIXES = ("_per_s", "_seconds")

SENTENCES = [
    ("The cat sat on the mat.", "It fell asleep in the sun.", 0),
    ("A storm is coming from the west tonight.", "Close the windows before you leave.", 1),
    ("She bought three apples and a loaf of bread.", "The market was busy this morning.", 0),
    ("Interest rates rose again last quarter.", "Borrowers will pay more for loans.", 1),
    ("The children built a castle out of sand.", "The tide washed it away by evening.", 0),
    ("He forgot his keys at the office.", "His neighbour let him in.", 1),
    ("Paris is the capital of France.", "It lies on the Seine.", 0),
    ("The committee postponed the vote until Friday.", "Several members were absent.", 1),
    ("Water boils at one hundred degrees Celsius.", "At altitude it boils sooner.", 0),
    ("My brother plays the violin every evening.", "The neighbours do not complain.", 1),
    ("The train to Berlin was delayed by an hour.", "Passengers waited on the platform.", 0),
    ("Photosynthesis turns light into chemical energy.", "Plants store it as sugar.", 1),
    ("The old bridge was closed for repairs.", "Traffic used the ferry instead.", 0),
    ("Our team won the match in extra time.", "The fans celebrated all night.", 1),
    ("The museum opens at nine on weekdays.", "Tickets are cheaper online.", 0),
    ("A small dog barked at the postman.", "The postman was not impressed.", 1),
    ("The recipe needs two eggs and some flour.", "Mix them slowly.", 0),
    ("Scientists discovered a new species of frog.", "It lives high in the mountains.", 1),
    ("The printer ran out of paper again.", "Nobody refilled it.", 0),
    ("He read the whole novel in one weekend.", "He could not put it down.", 1),
    ("The river flooded the lower fields in spring.", "Farmers moved their cattle uphill.", 0),
    ("This laptop battery lasts about ten hours.", "It charges in one hour.", 1),
    ("The singer cancelled her tour due to illness.", "Refunds will be issued.", 0),
    ("Snow covered the village overnight.", "Schools stayed closed.", 1),
]

SINGLE = "The quick brown fox jumps over the lazy dog near the river bank."
PAIR = ("Where did the cat sleep?", "The cat slept on the warm mat by the fire.")
# Bounds and tokens per sentence of the ~N-token texts (MiniLM WordPiece: about 11 tokens a sentence).
N_SENTENCES_600, N_SENTENCES_1500 = 44, 110


def long_text(n: int) -> str:
    """``n`` numbered sentences cycling through :data:`SENTENCES` (fixed, no randomness)."""
    parts = []
    for i in range(n):
        a, b, _ = SENTENCES[i % len(SENTENCES)]
        parts.append(f"{a[:-1]} ({i + 1}). {b}" if i % 3 == 0 else f"{a[:-1]} ({i + 1}).")
    return " ".join(parts)


def write_inputs(inputs: Path) -> None:
    """The datasets and texts every command reads."""
    inputs.mkdir(parents=True)
    with open(inputs / "data.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["text", "pair", "label"])
        w.writerows(SENTENCES)
    (inputs / "lines.txt").write_text("\n".join(s for s, _, _ in SENTENCES[:10]) + "\n", encoding="utf-8")
    (inputs / "text600.txt").write_text(long_text(N_SENTENCES_600) + "\n", encoding="utf-8")
    (inputs / "text1500.txt").write_text(long_text(N_SENTENCES_1500) + "\n", encoding="utf-8")
    (inputs / "matplotlibrc").write_text("svg.hashsalt: check_outputs_identical\n", encoding="utf-8")


def build_models(models: Path) -> None:
    """Three saved models, each a deterministic function of fixed seeds (same versions, same bytes)."""
    import torch
    import transformers as tf

    from hf_attn_inspect import default_model_path

    torch.manual_seed(0)
    src = default_model_path()
    tok = tf.AutoTokenizer.from_pretrained(src)
    # 1. The embedded MiniLM with every weight perturbed by seeded Gaussian noise (2% of its std).
    model = tf.AutoModel.from_pretrained(src, attn_implementation="eager")
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * (0.02 * float(p.std())))
    model.save_pretrained(models / "minilm_perturbed")
    tok.save_pretrained(models / "minilm_perturbed")
    # 2. A tiny random BERT sequence classifier (two labels), for importance --label-column.
    torch.manual_seed(1)
    cfg = tf.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)
    tf.BertForSequenceClassification(cfg).eval().save_pretrained(models / "tiny_clf")
    tok.save_pretrained(models / "tiny_clf")
    # 3. A tiny random long-context Llama (GQA 4q/2kv heads, RoPE), for long on ~1,500 tokens.
    torch.manual_seed(2)
    cfg = tf.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=0)
    tf.LlamaForCausalLM(cfg).eval().save_pretrained(models / "tiny_llama")
    tok.model_max_length = 4096
    tok.save_pretrained(models / "tiny_llama")


def runs() -> list[tuple[str, list[str]]]:
    """(name, arguments) of every command run; outputs go to ``<name>`` (relative to the output root)."""
    t600 = long_text(N_SENTENCES_600)
    data = "_inputs/data.csv"
    return [
        ("inspect_single", ["inspect", SINGLE, "--out", "inspect_single", "--layer", "1", "--head", "2", "--html"]),
        ("inspect_pair", ["inspect", PAIR[0], "--pair", PAIR[1], "--all-heads", "--layer", "5", "--head", "11",
                          "--out", "inspect_pair"]),
        ("inspect_pair_svg", ["inspect", PAIR[0], "--pair", PAIR[1], "--format", "svg", "--scale", "sqrt",
                              "--out", "inspect_pair_svg"]),
        ("inspect_long_100MB", ["inspect", t600, "--max-memory", "100MB", "--layer", "3", "--head", "4",
                               "--out", "inspect_long_100MB"]),
        ("inspect_long_150MB", ["inspect", t600, "--max-memory", "150MB", "--all-heads", "--out", "inspect_long_150MB"]),
        ("inspect_tiny_llama", ["inspect", SINGLE, "--model", "_models/tiny_llama", "--all-heads",
                                "--out", "inspect_tiny_llama"]),
        ("view_single", ["view", SINGLE, "-o", "view_single/attention.html"]),
        ("view_long", ["view", t600, "--max-memory", "100MB", "--layers", "0", "5", "-o", "view_long/attention.html"]),
        ("batch_text", ["batch", "--dataset", data, "--column", "text", "--batch-size", "5", "--shard-size", "10",
                        "-q", "--out", "batch_text"]),
        ("batch_pairs", ["batch", "--dataset", data, "--column", "text,pair", "--limit", "12", "--max-length", "16",
                         "-q", "--out", "batch_pairs"]),
        ("batch_lines", ["batch", "--dataset", "_inputs/lines.txt", "-q", "--out", "batch_lines"]),
        ("compare_self", ["compare", "default", "default", "--text", SINGLE, "--text", SENTENCES[3][0],
                          "-q", "--out", "compare_self"]),
        ("compare_perturbed", ["compare", "default", "_models/minilm_perturbed", "--dataset", data, "--column", "text",
                               "--limit", "16", "--batch-size", "4", "--shard-size", "8", "--top", "2", "-q",
                               "--out", "compare_perturbed"]),
        ("compare_pairs", ["compare", "default", "_models/minilm_perturbed", "--dataset", data,
                           "--column", "text,pair", "--limit", "6", "-q", "--out", "compare_pairs"]),
        ("long_default", ["long", "_inputs/text1500.txt", "--out", "long_default"]),
        ("long_tiny_llama", ["long", "_inputs/text1500.txt", "--model", "_models/tiny_llama", "--bins", "16",
                             "--local-window", "8", "--q-tile", "256", "--k-tile", "256", "--out", "long_tiny_llama"]),
        ("long_layers", ["long", "_inputs/text600.txt", "--max-length", "300", "--layers", "0", "5",
                         "--out", "long_layers"]),
        ("importance_ablation", ["importance", "--dataset", data, "--column", "text", "--limit", "4",
                                 "--batch-size", "2", "--shard-size", "2", "--prune-step", "0.25", "-q",
                                 "--out", "importance_ablation"]),
        ("importance_gradient", ["importance", SINGLE, SENTENCES[5][0], "--method", "gradient", "--heads", "0.1,2.3",
                                 "-q", "--out", "importance_gradient"]),
        ("importance_clf", ["importance", "--model", "_models/tiny_clf", "--dataset", data, "--column", "text",
                            "--label-column", "label", "--ablate", "mean", "--reestimate", "--prune-step", "0.25",
                            "-q", "--out", "importance_clf"]),
        ("importance_causal", ["importance", "--model", "_models/tiny_llama", SINGLE, SENTENCES[7][0],
                               "--prune-step", "0.5", "--no-pruning", "-q", "--out", "importance_causal"]),
        ("verify", ["verify", SINGLE, PAIR[1]]),
        ("debug", ["debug", "--brief", SINGLE, SENTENCES[10][0]]),
    ]


#: Environment of every run (set before torch is imported, inherited by the forked runs).
ENV = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0",
       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
       "TOKENIZERS_PARALLELISM": "false", "TZ": "UTC", "LC_ALL": "C.UTF-8"}


def _preload() -> None:
    """Import the heavy libraries once in the parent (no tensor op runs there, so no thread pool is started
    before forking): each forked run then does not pay seconds of imports."""
    import datasets  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModel, AutoTokenizer, BertModel, LlamaForCausalLM  # noqa: F401

    import hf_attn_inspect.cli  # noqa: F401

    plt.close("all")


def _run_forked(out: Path, name: str, args: list[str]) -> int:
    """Run ``hf-attn-inspect ARGS`` in a forked child with ``out`` as working directory and its stdout and stderr
    (file descriptors 1 and 2) in ``out/<name>.stdout`` / ``.stderr``; returns the exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: a fresh process with the libraries already imported
        code = 70
        try:
            os.chdir(out)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            os.dup2(os.open(f"{name}.stdout", flags, 0o644), 1)
            os.dup2(os.open(f"{name}.stderr", flags, 0o644), 2)
            sys.argv = ["hf-attn-inspect", *args]
            from hf_attn_inspect.cli import main as cli_main

            try:
                code = int(cli_main(args) or 0)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported in the .stderr file; the run counts as failed
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def write(out: Path) -> int:
    """Run every command of :func:`runs` into ``out`` (which must not exist or be empty)."""
    if out.exists() and any(out.iterdir()):
        print(f"{out} exists and is not empty", file=sys.stderr)
        return 2
    os.environ.update(ENV)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    sys.path.insert(0, str(ROOT))
    out.mkdir(parents=True, exist_ok=True)
    write_inputs(out / "_inputs")
    os.environ["MATPLOTLIBRC"] = str(out / "_inputs" / "matplotlibrc")  # read when matplotlib is imported
    t_all = time.perf_counter()
    # The models are built in a child process: the parent runs no tensor op before it forks.
    subprocess.run([sys.executable, __file__, "_models", str(out / "_models")], check=True)
    _preload()
    print(f"inputs, models and imports {time.perf_counter() - t_all:.1f}s", flush=True)
    failed = []
    for name, args in runs():
        t0 = time.perf_counter()
        rc = _run_forked(out, name, args)
        (out / f"{name}.rc").write_text(f"{rc}\n", encoding="utf-8")
        print(f"{name:22s} rc={rc} {time.perf_counter() - t0:6.1f}s", flush=True)
        if rc != 0:
            failed.append(name)
            print((out / f"{name}.stderr").read_text(encoding="utf-8")[-2000:], file=sys.stderr)
    shutil.rmtree(out / "_models")
    print(f"total {time.perf_counter() - t_all:.1f}s; {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------- compare
def _strip_json(value):
    if isinstance(value, dict):
        return {k: _strip_json(v) for k, v in value.items()
                if k not in DROPPED_KEYS and not k.endswith(DROPPED_SUFFIXES)}
    if isinstance(value, list):
        return [_strip_json(v) for v in value]
    return value


_SVG_DATE = re.compile(rb"<dc:date>.*?</dc:date>", re.DOTALL)


def _normalised(path: Path, data: bytes) -> bytes:
    if path.suffix == ".json":
        try:
            return json.dumps(_strip_json(json.loads(data)), sort_keys=True, indent=1).encode()
        except ValueError:
            return data
    if path.suffix == ".svg":
        return _SVG_DATE.sub(b"<dc:date/>", data)
    return data


def _pixels_equal(a: bytes, b: bytes) -> bool:
    from PIL import Image

    ia, ib = Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b))
    return ia.size == ib.size and ia.mode == ib.mode and ia.tobytes() == ib.tobytes()


def _text_diff(a: bytes, b: bytes, name: str, limit: int = 12) -> str:
    try:
        la, lb = a.decode().splitlines(), b.decode().splitlines()
    except UnicodeDecodeError:
        return ""
    lines = list(difflib.unified_diff(la, lb, f"A/{name}", f"B/{name}", n=0, lineterm=""))
    more = f"\n      ... {len(lines) - limit} more diff lines" if len(lines) > limit else ""
    return "\n".join("      " + line[:200] for line in lines[:limit]) + more


def compare(a: Path, b: Path) -> int:
    """Compare the trees ``a`` and ``b`` (see the module docstring); 0 when identical, else 1."""
    fa = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
    problems, images, notes = [], [], []
    for rel in sorted(fa - fb):
        problems.append(f"only in A: {rel}")
    for rel in sorted(fb - fa):
        problems.append(f"only in B: {rel}")
    n = 0
    for rel in sorted(fa & fb):
        pa, pb = a / rel, b / rel
        da, db = pa.read_bytes(), pb.read_bytes()
        if rel.endswith(".stderr"):
            if da != db:
                notes.append(f"stderr differs (not compared): {rel}")
            continue
        n += 1
        if da == db or _normalised(pa, da) == _normalised(pb, db):
            continue
        suffix = pa.suffix.lower()
        if suffix == ".png":
            same = _pixels_equal(da, db)
            images.append(f"PNG differs: {rel} ({'same decoded pixels, different encoding' if same else 'pixels differ'})")
        elif suffix in (".svg", ".html"):
            images.append(f"{suffix[1:].upper()} differs: {rel}\n" + _text_diff(_normalised(pa, da), _normalised(pb, db), rel))
        else:
            problems.append(f"differs: {rel}\n" + _text_diff(_normalised(pa, da), _normalised(pb, db), rel))
    for line in notes:
        print(f"note: {line}")
    if problems or images:
        print(f"{len(problems) + len(images)} difference(s) in {n} compared files:")
        for line in problems:
            print(f"  {line}")
        if images:
            print("images / HTML:")
            for line in images:
                print(f"  {line}")
        return 1
    print(f"identical: {n} files compared ({len(fa)} in each tree, *.stderr not compared)")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "write":
        return write(Path(argv[1]).resolve())
    if len(argv) == 2 and argv[0] == "_models":  # internal: build the tiny models (see write)
        os.environ.update(ENV)
        sys.path.insert(0, str(ROOT))
        import torch

        torch.set_num_threads(2)
        build_models(Path(argv[1]))
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        return compare(Path(argv[1]), Path(argv[2]))
    print(__doc__.split("\n\n")[0] + "\n\nusage: check_outputs_identical.py write DIR | compare DIR_A DIR_B",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
