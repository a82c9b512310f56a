"""Image datasets: per-head statistics over many images, and two vision checkpoints compared on the same images.

The images come from a folder (every image file under it, sorted by path) or from a ``datasets`` dataset (a Hub
name, a local Parquet/JSON file or folder, a ``datasets.Dataset``) whose ``column`` holds images (an ``Image``
feature: PIL images; or file paths). They run ``batch_size`` at a time through
:meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.capture_batch` (the capture path, checked against the
memory budget) and each image's head table (:func:`~hf_attn_inspect.stats.patterns.head_table`: the text metrics,
the pattern class and the mean attention distance in pixels and patches) is reduced to a mean and a population
standard deviation over images per head, plus the share of images in each pattern class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from ..capture.inspector import AttentionInspector
from ..capture.result import AttentionResult
from ..core.errors import InputError
from ..core.images import image_files
from ..stats.patterns import head_table
from ..stats.vision import distance_table
from .sources import load_dataset_texts

__all__ = ["ImageSource", "analyze_images", "compare_image_models", "image_items"]

#: What :func:`image_items` reads: a folder of images, a list of images, or a ``datasets`` source.
ImageSource = Any


def image_items(source: ImageSource, *, column: str = "image", config: str | None = None, split: str | None = None,
                limit: int | None = None) -> list[Any]:
    """The images of ``source``, in order: the image files under a folder (sorted by path), the items of a list,
    or the ``column`` of a ``datasets`` source (PIL images or paths; see
    :func:`~hf_attn_inspect.runs.sources.load_dataset_texts` for what it reads). ``limit`` keeps the first ones.
    A folder without images or an empty source raises :class:`InputError`."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    if isinstance(source, (list, tuple)):
        items = list(source)
    elif isinstance(source, (str, os.PathLike)) and Path(os.fspath(source)).expanduser().is_dir() \
            and image_files(source):
        items = image_files(source)
    else:
        ds, _ = load_dataset_texts(source, config=config, split=split, column=column, limit=limit)
        items = [x for x in ds[column]]
    items = items[:limit] if limit is not None else items
    if not items:
        raise InputError("no images to analyse")
    return items


def _results(inspector: AttentionInspector, items: Sequence[Any], batch_size: int) -> Iterator[AttentionResult]:
    """Each image's full result, ``batch_size`` images per forward pass."""
    for start in range(0, len(items), max(1, batch_size)):
        batch = inspector.encode_images(items[start : start + batch_size], first=start)
        yield from inspector.capture_batch(batch)


def analyze_images(inspector: AttentionInspector, source: ImageSource, *, column: str = "image",
                   config: str | None = None, split: str | None = None, limit: int | None = None,
                   batch_size: int = 8) -> pd.DataFrame:
    """One row per (layer, head): ``<metric>_mean`` and ``<metric>_std`` over images of every numeric column of the
    per-image head table (the attention metrics of :mod:`~hf_attn_inspect.stats.metrics`,
    ``attention_distance_px``/``_patches`` and the ``to_<kind>`` shares of non-patch units,
    :func:`~hf_attn_inspect.stats.vision.distance_table`), and ``share_<pattern>``: the share of images in which the
    head has that pattern class. ``df.attrs["n_images"]`` counts the images."""
    items = image_items(source, column=column, config=config, split=split, limit=limit)
    tables = [head_table(r) for r in _results(inspector, items, batch_size)]
    stacked = pd.concat(tables, ignore_index=True)
    numeric = [c for c in stacked.columns if c not in ("layer", "head") and pd.api.types.is_numeric_dtype(stacked[c])
               and not pd.api.types.is_bool_dtype(stacked[c])]
    grouped = stacked.groupby(["layer", "head"], sort=True)
    df = grouped[numeric].mean().add_suffix("_mean").join(grouped[numeric].std(ddof=0).add_suffix("_std"))
    shares = pd.crosstab([stacked["layer"], stacked["head"]], stacked["pattern"], normalize="index")
    df = df.join(shares.add_prefix("share_")).reset_index()
    df.attrs["n_images"] = len(tables)
    return df


def compare_image_models(a: AttentionInspector, b: AttentionInspector, source: ImageSource, *,
                         column: str = "image", config: str | None = None, split: str | None = None,
                         limit: int | None = None, batch_size: int = 8) -> pd.DataFrame:
    """Per (layer, head), how differently two vision checkpoints attend on the same images: ``js_divergence`` (nats;
    the Jensen-Shannon divergence between A's and B's attention rows, averaged over every query unit and image,
    :func:`~hf_attn_inspect.runs.compare.js_divergence_rows`) and each model's mean attention distance
    (``a_attention_distance_px``, ``b_attention_distance_px``), sorted by divergence. Both models must cut the
    images into the same units and have the same layers and heads."""
    from .compare import js_divergence_rows

    items = image_items(source, column=column, config=config, split=split, limit=limit)
    js, dist_a, dist_b = [], [], []
    for ra, rb in zip(_results(a, items, batch_size), _results(b, items, batch_size)):
        if ra.tokens != rb.tokens or ra.attentions.shape != rb.attentions.shape:
            raise InputError(f"the two models see the image differently ({len(ra.tokens)} vs {len(rb.tokens)} units, "
                             f"{tuple(ra.attentions.shape[:2])} vs {tuple(rb.attentions.shape[:2])} layers x heads); "
                             "compare checkpoints of one architecture and image size")
        js.append(js_divergence_rows(ra.attentions.double(), rb.attentions.double()).mean(-1).numpy())
        dist_a.append(distance_table(ra)["attention_distance_px"].to_numpy())
        dist_b.append(distance_table(rb)["attention_distance_px"].to_numpy())
    first = distance_table(ra)
    df = pd.DataFrame({"layer": first["layer"], "head": first["head"],
                       "js_divergence": np.mean(js, axis=0).ravel(),
                       "a_attention_distance_px": np.mean(dist_a, axis=0),
                       "b_attention_distance_px": np.mean(dist_b, axis=0)})
    df.attrs["n_images"] = len(js)
    return df.sort_values("js_divergence", ascending=False, kind="stable").reset_index(drop=True)
