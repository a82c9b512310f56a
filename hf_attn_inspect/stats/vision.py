"""Attention over image patches: CLS maps, rollout over the image, patch queries, mean attention distance.

Every function reads an image :class:`~hf_attn_inspect.capture.result.AttentionResult` (one with a ``grid``) and
returns patch maps ``[..., rows, cols]`` in the grid of :class:`~hf_attn_inspect.capture.grid.PatchGrid`:

* :func:`cls_attention` — the ``[CLS]`` query's weights on the patches (DINO's self-attention maps), per head;
  :func:`top_mass_mask` keeps the largest patches holding a share of a map's mass (DINO's ``--threshold``).
* :func:`image_rollout` — attention rollout (Abnar & Zuidema 2020) with vit-explain's head fusion (mean, max,
  min) and discard ratio; the ``[CLS]`` row over the patches. It differs from jacobgil/vit-explain's code in
  one place: vit-explain writes ``a / a.sum(dim=-1)``, which broadcasts and divides *column* ``j`` by the sum of
  *row* ``j``; here each row is divided by its own sum, as the paper's definition says (both agree when rows
  already sum to 1: mean fusion without discarding). Both discard the smallest weights of the whole fused
  matrix except the ``[CLS]``-to-``[CLS]`` entry, and both multiply ``R = A_l R`` from the first layer up.
* :func:`patch_query` — one patch's attention over the image.
* :func:`attention_distance` / :func:`distance_table` — the ViT paper's mean attention distance (Dosovitskiy et
  al. 2020, Fig. 7): per head, the distance in pixels between a query patch and the patches it attends to,
  weighted by attention and averaged over query patches. Non-patch keys (``[CLS]``, ``[DIST]``, registers)
  have no position: their share of each patch query's attention is reported apart (``to_class``,
  ``to_register``, ...), and the distance is over the patch keys with their weights renormalised.
* :func:`artifact_patches` — Darcet et al. (2024): vision transformers without registers turn some background
  patches into high-norm tokens that hold global information; a patch whose output norm exceeds ``factor``
  times the median patch norm is flagged.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..capture.grid import PatchGrid
from ..capture.result import AttentionResult
from ..core.errors import InputError
from .aggregate import attention_rollout

__all__ = [
    "HEAD_FUSIONS",
    "artifact_patches",
    "attention_distance",
    "cls_attention",
    "distance_table",
    "fuse_heads",
    "image_grid",
    "image_rollout",
    "patch_query",
    "top_mass_mask",
]

#: How :func:`image_rollout` fuses a layer's heads (vit-explain's ``head_fusion``).
HEAD_FUSIONS = ("mean", "max", "min")


def image_grid(result: AttentionResult) -> PatchGrid:
    """The result's :class:`PatchGrid`; an :class:`InputError` for a result of text."""
    if not isinstance(result, AttentionResult) or result.grid is None:
        raise InputError("this view needs the attention of an image (a vision model's result with a patch grid)")
    return result.grid


def _layer(result: AttentionResult, layer: int | None) -> int:
    """Position in ``result`` of model layer ``layer`` (None: the last captured layer)."""
    return result.num_layers - 1 if layer is None else result.layer_index(layer)


def cls_attention(result: AttentionResult, layer: int | None = None, heads: Sequence[int] | None = None) -> np.ndarray:
    """``float32 [heads, rows, cols]``: the weight the ``[CLS]`` query of model layer ``layer`` (default: the last
    captured) gives to each patch, per head (``heads``: model head indices, default all). Not renormalised: a map
    sums to 1 minus the share ``[CLS]`` gives to the non-patch units (itself, ``[DIST]``, registers)."""
    grid = image_grid(result)
    li = _layer(result, layer)
    idx = list(range(result.num_heads)) if heads is None else [result.head_index(h) for h in heads]
    w = result.attentions[li, idx, 0, grid.patches].float().numpy()
    return grid.to_map(w)


def top_mass_mask(maps: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the same shape as ``maps [..., rows, cols]``: per map, the fewest largest patches whose
    weights add up to at least ``fraction`` (0..1) of the map's total (DINO's "keep x % of the mass")."""
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"the kept share of the mass must be in (0, 1], got {fraction}")
    m = np.asarray(maps, dtype=np.float64)
    flat = m.reshape(-1, m.shape[-2] * m.shape[-1])
    order = np.argsort(-flat, axis=-1, kind="stable")
    sorted_ = np.take_along_axis(flat, order, -1)
    total = sorted_.sum(-1, keepdims=True)
    before = (np.cumsum(sorted_, -1) - sorted_) / np.where(total > 0, total, 1.0)
    keep_sorted = before < fraction - 1e-12  # a patch is kept while the share before it is short of the target
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, -1)
    return keep.reshape(m.shape)


def fuse_heads(weights: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """``[layers, heads, T, T]`` -> ``[layers, T, T]``: the heads' mean, elementwise max or min (vit-explain)."""
    if head_fusion not in HEAD_FUSIONS:
        raise InputError(f"unknown head fusion '{head_fusion}'; choose one of {', '.join(HEAD_FUSIONS)}")
    w = weights.float()
    return {"mean": lambda: w.mean(1), "max": lambda: w.amax(1), "min": lambda: w.amin(1)}[head_fusion]()


def image_rollout(result: AttentionResult, head_fusion: str = "mean", discard_ratio: float = 0.0) -> np.ndarray:
    """``float32 [rows, cols]``: attention rollout after the last captured layer, ``[CLS]``'s row over the patches.

    Per layer the heads are fused (``head_fusion``: mean, max or min); the ``discard_ratio`` (0..1) smallest
    entries of the fused ``[T, T]`` matrix are set to 0 (never ``[CLS]`` to ``[CLS]``); ``A = (W + I) / 2`` with
    each row divided by its sum; ``R = A_L ... A_1`` (:func:`~hf_attn_inspect.stats.aggregate.attention_rollout`).
    Entry ``(r, c)`` is how much of patch ``(r, c)`` reaches the ``[CLS]`` output. See the module docstring for
    where this differs from vit-explain's code."""
    grid = image_grid(result)
    if not 0.0 <= discard_ratio < 1.0:
        raise InputError(f"discard ratio must be in [0, 1), got {discard_ratio}")
    fused = fuse_heads(result.attentions, head_fusion)  # [L, T, T]
    if discard_ratio > 0:
        flat = fused.reshape(fused.shape[0], -1).clone()
        k = int(flat.shape[-1] * discard_ratio)
        if k:
            low = flat.topk(k, dim=-1, largest=False).indices
            keep_cls = flat[:, :1].clone()
            flat.scatter_(-1, low, 0.0)
            flat[:, :1] = keep_cls
        fused = flat.reshape(fused.shape)
    rolled = attention_rollout(fused[:, None], residual=0.5)[-1]
    return grid.to_map(rolled[0, grid.patches].numpy())


def patch_query(result: AttentionResult, layer: int | None, head: int | None, row: int, col: int) -> np.ndarray:
    """``float32 [rows, cols]``: the weights patch ``(row, col)`` gives every patch in model layer ``layer``
    (default last) and head ``head`` (None: the mean of the heads)."""
    grid = image_grid(result)
    li = _layer(result, layer)
    q = grid.unit(row, col)
    w = result.attentions[li, :, q, grid.patches] if head is None else result.attentions[li, result.head_index(head), q, grid.patches]
    w = w.mean(0) if head is None else w
    return grid.to_map(w.float().numpy())


def attention_distance(result: AttentionResult) -> dict[str, np.ndarray]:
    """Mean attention distance of every captured head (``[layers, heads]`` arrays): ``pixels`` (in the model's
    input image), ``patches`` (the same in patch widths), and ``to_<kind>`` for each non-patch kind present
    (``class``, ``distillation``, ``register``): the mean share of a patch query's attention on such units.

    Per patch query ``i``: ``d_i = sum_j a_ij |c_i - c_j| / sum_j a_ij`` over patch keys ``j`` (``c`` the patch
    centres, Euclidean distance); the head's value is the mean of ``d_i`` over the patch queries."""
    grid = image_grid(result)
    c = grid.centers()
    dist = torch.from_numpy(np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1))).float()  # [P, P]
    w = result.attentions.float()
    pp = w[..., grid.patches, grid.patches]  # [L, H, P, P]
    mass = pp.sum(-1).clamp_min(1e-12)
    per_query = (pp * dist).sum(-1) / mass
    px = per_query.mean(-1).numpy()
    out = {"pixels": px, "patches": px / grid.patch}
    kinds = np.array(grid.kinds())
    for kind in dict.fromkeys(grid.lead_kinds):
        cols = torch.from_numpy(np.flatnonzero(kinds == kind))
        out[f"to_{kind}"] = w[..., grid.patches, :][..., cols].sum(-1).mean(-1).numpy()
    return out


def distance_table(results: AttentionResult | Sequence[AttentionResult]) -> pd.DataFrame:
    """One row per captured layer and head: ``attention_distance_px``, ``attention_distance_patches`` and the
    ``to_<kind>`` columns of :func:`attention_distance`, averaged over the images (all of one grid kind)."""
    items = [results] if isinstance(results, AttentionResult) else list(results)
    if not items:
        raise InputError("no image results given")
    per = [attention_distance(r) for r in items]
    mean = {k: np.mean([p[k] for p in per], axis=0) for k in per[0]}
    first = items[0]
    layers, heads = np.meshgrid(first.layer_ids, first.head_ids, indexing="ij")
    df = pd.DataFrame({"layer": layers.ravel(), "head": heads.ravel(),
                       "attention_distance_px": mean.pop("pixels").ravel(),
                       "attention_distance_patches": mean.pop("patches").ravel()})
    for k, v in mean.items():
        df[k] = v.ravel()
    return df


def artifact_patches(norms: torch.Tensor | np.ndarray, grid: PatchGrid, factor: float = 2.0) -> np.ndarray:
    """Boolean ``[rows, cols]``: patches whose output norm is above ``factor`` times the median patch norm
    (Darcet et al. 2024's high-norm artifact tokens). ``norms`` are one image's per-unit norms ``[units]`` (the
    last hidden state's, :func:`~hf_attn_inspect.capture.images.output_norms`) or already the ``[patches]``."""
    n = np.asarray(torch.as_tensor(norms).float().cpu())
    if n.shape[-1] == grid.n_units:
        n = n[..., grid.patches]
    median = float(np.median(n))
    return grid.to_map(n > factor * median)
