"""The image side of ``inspect``, ``view``, ``batch`` and ``compare``: what they do when given an image.

``inspect IMAGE`` writes the chosen head's ``[CLS]`` map over the image, the layer's heads, the model view, the
rollout over the image and the mean attention distance figure, and prints the distances and any high-norm artifact
patches; ``view IMAGE`` writes the explorer in its image mode; ``batch``/``compare`` on a folder of images (or a
``datasets`` Image column) write per-head statistics. Each checks its input before loading the model, and a text
model given an image (or a vision model given text) stops with one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import InputError
from ..core.files import check_output_dir, check_replaceable, record_outputs
from ..core.images import check_image_file, image_files, is_image_file
from .options import load_inspector

__all__ = ["batch_images", "compare_images", "inspect_image", "is_image_argument", "is_image_column", "is_image_folder",
           "refuse_images_for_text_model", "view_image"]


def is_image_argument(value: str) -> bool:
    """True when a command's TEXT argument names an image file (by its ending): the command runs on the image."""
    return is_image_file(value.strip())


def is_image_folder(dataset: str | None) -> bool:
    """True when ``--dataset`` is a folder holding image files."""
    return dataset is not None and bool(image_files(dataset))


def is_image_column(loaded: object, column: str) -> bool:
    """True when ``column`` of a loaded dataset (:meth:`~hf_attn_inspect.runs.data.DataSpec.load`) is a
    ``datasets`` Image feature."""
    features = getattr(getattr(loaded, "ds", None), "features", None) or {}
    return type(features.get(column)).__name__ == "Image"


def _image_to_text_model(inspector: object) -> InputError:
    return InputError(f"an image was given to {getattr(inspector, 'name', 'the model')}, a text model; pick a "
                      "vision transformer (ViT, DeiT, DINOv2, CLIP) with --model")


def refuse_images_for_text_model(inspector: object, values: list[str]) -> None:
    """Raise the one-line "an image was given to a text model" when a text model's TEXT arguments name image files."""
    if getattr(inspector, "processor", None) is None and any(is_image_argument(v) for v in values):
        raise _image_to_text_model(inspector)


def _vision(args: argparse.Namespace):
    """The inspector of ``--model``; a text model raises the one-line "an image was given to a text model"."""
    inspector = load_inspector(args)
    if inspector.processor is None:
        raise _image_to_text_model(inspector)
    return inspector


def inspect_image(args: argparse.Namespace) -> int:
    """``inspect IMAGE``: the figures of one image and the chosen head's distance (see the module docstring)."""
    image = check_image_file(args.text.strip())
    if args.pair is not None:
        raise InputError("--pair is for texts; an image has no second text")
    if args.top_mass is not None and not 0 < args.top_mass <= 1:
        raise InputError(f"--top-mass must be in (0, 1], got {args.top_mass}")
    if not 0 <= args.discard_ratio < 1:
        raise InputError(f"--discard-ratio must be in [0, 1), got {args.discard_ratio}")
    out = check_output_dir(args.out)
    f = args.format
    files = [f"head_L{args.layer}_H{args.head}.{f}", f"layer_{args.layer}_heads.{f}", f"model_view.{f}",
             f"rollout.{f}", f"attention_distance.{f}"] + (["attention.html"] if args.html else [])
    check_replaceable(out, files, overwrite=args.overwrite)
    from ..core.files import files_kept_on_success
    from ..core.memory import oom_guard

    with files_kept_on_success(out), oom_guard("writing inspect's figures", "try a smaller --max-memory"):
        return _inspect_image(args, image, out, files)


def _inspect_image(args: argparse.Namespace, image: Path, out: Path, files: list[str]) -> int:
    from ..capture.images import output_norms
    from ..stats.vision import artifact_patches, distance_table
    from ..views.plotting import plot_model_view, save_figure
    from ..views.vision import plot_attention_distance, plot_cls_attention, plot_cls_attention_heads, plot_image_rollout

    inspector = _vision(args)
    layers, heads = inspector.num_layers, inspector.num_heads
    for value, limit, what in ((args.layer, layers, "layer"), (args.head, heads, "head")):
        if not 0 <= value < limit:
            raise InputError(f"{what} {value} is out of range; valid {what}s: 0..{limit - 1}")
    result = inspector(image, max_memory=args.max_memory)
    grid = result.grid
    norms = output_norms(inspector, inspector.encode_images([image]))[0]
    flags = artifact_patches(norms, grid)
    record_outputs(out, files)
    written = []
    ax = plot_cls_attention(result, args.layer, args.head, top_mass=args.top_mass, artifacts=flags)
    written.append(save_figure(ax.figure, out / files[0]))
    written.append(save_figure(plot_cls_attention_heads(result, args.layer, top_mass=args.top_mass, artifacts=flags),
                               out / files[1]))
    written.append(save_figure(plot_model_view(result.attentions, layer_ids=result.layer_ids, head_ids=result.head_ids,
                                               scale=args.scale or "sqrt"), out / files[2]))
    ax = plot_image_rollout(result, args.head_fusion, args.discard_ratio)
    written.append(save_figure(ax.figure, out / files[3]))
    ax = plot_attention_distance(result)
    written.append(save_figure(ax.figure, out / files[4]))
    if args.html:
        from ..views.explorer import write_explorer

        written.append(write_explorer(result, out / "attention.html"))

    table = distance_table(result)
    print(f"model: {inspector.name}")
    print(f"image: {image.name} as {grid.width} x {grid.height} pixels; units ({grid.n_units}): "
          f"{' '.join(grid.lead_labels)} + {grid.rows} x {grid.cols} patches of {grid.patch} px")
    row = table[(table["layer"] == args.layer) & (table["head"] == args.head)].iloc[0]
    shares = ", ".join(f"{c[3:]} {row[c]:.3f}" for c in table.columns if c.startswith("to_"))
    print(f"layer {args.layer}, head {args.head}: mean attention distance {row['attention_distance_px']:.1f} px "
          f"({row['attention_distance_patches']:.2f} patches); patch queries' share on non-patch units: {shares}")
    by_layer = table.groupby("layer")["attention_distance_px"].agg(["min", "mean", "max"])
    print("mean attention distance by layer (px, min / mean / max over heads):")
    for layer, r in by_layer.iterrows():
        print(f"  layer {layer:2d}  {r['min']:7.1f} {r['mean']:7.1f} {r['max']:7.1f}")
    flagged = [f"p({r},{c})" for r, c in zip(*flags.nonzero())]
    print(f"high-norm patches (output norm > 2 x median, Darcet et al. 2024): {' '.join(flagged) if flagged else 'none'}")
    if args.all_heads:
        from ..stats.patterns import head_table
        from ..stats.tables import format_head_table

        table = head_table(result)
        extra = ["attention_distance_px", "attention_distance_patches"] + [c for c in table.columns if c.startswith("to_")]
        print("\nEVERY HEAD: pattern class, entropy (nats) and mean attention distance (pixels, patches); to_<kind>: "
              "share of patch queries' attention on non-patch units")
        print(format_head_table(table, columns=["layer", "head", "class", "entropy", *extra]))
    for path in written:
        print(f"wrote {path}")
    return 0


def view_image(args: argparse.Namespace, out: Path) -> int:
    """``view IMAGE``: the explorer page in its image mode (the image with the overlay; hover a patch)."""
    image = check_image_file(args.text.strip())
    if args.pair is not None:
        raise InputError("--pair is for texts; an image has no second text")
    from ..views.explorer import write_explorer

    inspector = _vision(args)
    result = inspector(image, layers=args.layers, max_memory=args.max_memory)
    path = write_explorer(result, out, rollout=not args.no_rollout)
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({result.grid.n_units} units: {result.grid.rows} x {result.grid.cols} patches, "
          f"{result.num_layers} layers x {result.num_heads} heads, {size:.2f} MB)")
    return 0


def _image_outputs(args: argparse.Namespace, names: list[str]) -> Path:
    if getattr(args, "resume", False) or getattr(args, "streaming", False):
        raise InputError("--resume and --streaming are for text datasets; an image run is written at its end")
    out = check_output_dir(args.out)
    check_replaceable(out, names, overwrite=args.overwrite)
    return out


def batch_images(args: argparse.Namespace) -> int:
    """``batch`` on images: ``head_stats.csv`` (per-head mean/std over images, distance included) and
    ``attention_distance.png``."""
    from ..core.files import atomic_write
    from ..runs.images import analyze_images
    from ..views.plotting import save_figure
    from ..views.vision import plot_attention_distance

    out = _image_outputs(args, ["head_stats.csv", "attention_distance.png"])
    inspector = _vision(args)
    df = analyze_images(inspector, args.dataset, column=args.column, config=args.config, split=args.split,
                        limit=args.limit, batch_size=args.batch_size)
    record_outputs(out, ["head_stats.csv", "attention_distance.png"])
    atomic_write(out / "head_stats.csv", lambda fh: df.to_csv(fh, index=False))
    shown = df.rename(columns={"attention_distance_px_mean": "attention_distance_px"})
    save_figure(plot_attention_distance(shown).figure, out / "attention_distance.png")
    n = df.attrs["n_images"]
    print(f"analysed {n} image{'s' if n != 1 else ''}; {len(df)} heads -> {args.out}/head_stats.csv, "
          "attention_distance.png")
    return 0


def compare_images(args: argparse.Namespace, models: list[str | None]) -> int:
    """``compare`` of two vision checkpoints on images: ``head_divergence.csv`` (JS divergence and both mean
    attention distances per head)."""
    out = _image_outputs(args, ["head_divergence.csv"])
    source = [check_image_file(i) for i in args.image] if args.image else args.dataset
    from ..capture.inspector import resolve_inspector
    from ..core.files import atomic_write
    from ..runs.images import compare_image_models

    insp = [resolve_inspector(m, device=args.device, dtype=args.dtype, what=f"model {w}") for m, w in zip(models, "AB")]
    for i, w in zip(insp, "AB"):
        if i.processor is None:
            raise InputError(f"model {w} ({i.name}) is a text model; compare two vision checkpoints on images")
    df = compare_image_models(insp[0], insp[1], source, column=args.column, config=args.config, split=args.split,
                              limit=args.limit, batch_size=args.batch_size)
    record_outputs(out, ["head_divergence.csv"])
    atomic_write(out / "head_divergence.csv", lambda fh: df.to_csv(fh, index=False))
    n = df.attrs["n_images"]
    print(f"compared {len(df)} heads on {n} image{'s' if n != 1 else ''}; most changed (JS divergence, nats; "
          "mean attention distance A -> B):")
    for row in df.head(max(args.top, 5)).itertuples():
        print(f"  layer {row.layer:2d} head {row.head:2d}  {row.js_divergence:.4f}  "
              f"{row.a_attention_distance_px:.1f} px -> {row.b_attention_distance_px:.1f} px")
    print(f"wrote {args.out}/head_divergence.csv")
    return 0
