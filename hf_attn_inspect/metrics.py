"""Per-head attention metrics as tensor operations: every sentence, layer and head at once.

This is the single implementation of the metric definitions. The DataFrame API of
:mod:`hf_attn_inspect.analysis`, the dataset engine, comparison and the explorer all call
:func:`sentence_metrics`. Definitions, for one sentence with ``n`` real tokens and weights ``a_ij`` (row
``i`` = query, column ``j`` = key), averaged over the valid query rows ``i < n`` unless said otherwise:

- ``entropy``: ``-sum_j a_ij ln(a_ij + 1e-10)`` in nats; ``max_entropy``: ``ln`` of the number of keys
  row ``i`` may see (``n``; ``i + 1`` for causal models), averaged the same way.
- ``diagonal``: ``a_ii``; ``previous_token``: ``a_i,i-1`` over rows ``i >= 1``; ``next_token``:
  ``a_i,i+1`` over rows ``i <= n-2``; ``first_token``: ``a_i0``.
- ``special_tokens`` / ``punctuation``: total weight on the tokenizer's special tokens / on tokens made
  only of punctuation.
- ``max_weight``: the row maximum ("confidence"); ``mean_distance``: ``sum_j a_ij |i - j|`` in tokens.
- ``weight_std``: population standard deviation of all ``n x n`` weights (the chapter's ``weights.std()``);
  ``sparsity``: share of those ``n x n`` weights ``<= sparsity_threshold`` (the chapter's, default 0.3).

Padding rows and columns never count. A metric with no eligible row (``previous_token`` of a one-token
sentence) is 0.
"""

from __future__ import annotations

import unicodedata

import torch

from .result import clean_token

__all__ = ["METRICS", "sentence_metrics", "punctuation_mask", "EPS"]

EPS = 1e-10

METRICS = (
    "entropy",
    "max_entropy",
    "diagonal",
    "previous_token",
    "next_token",
    "first_token",
    "special_tokens",
    "punctuation",
    "max_weight",
    "weight_std",
    "sparsity",
    "mean_distance",
)


def is_punctuation(token: str) -> bool:
    """True when the token (WordPiece ``##``, byte-level and SentencePiece markers removed) is only punctuation."""
    text = clean_token(token)
    text = text[2:] if text.startswith("##") else text
    text = text.strip()
    return bool(text) and all(unicodedata.category(c).startswith("P") for c in text)


def punctuation_mask(tokens: list[str]) -> torch.Tensor:
    """Boolean ``[len(tokens)]`` mask of tokens made only of punctuation characters."""
    return torch.tensor([is_punctuation(t) for t in tokens], dtype=torch.bool)


def sentence_metrics(
    weights: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    special: torch.Tensor | None = None,
    punctuation: torch.Tensor | None = None,
    causal: bool = False,
    sparsity_threshold: float = 0.3,
) -> dict[str, torch.Tensor]:
    """Every metric of the module docstring for each sentence and head: ``{name: [batch, ...]}``.

    ``weights`` is ``[batch, ..., T, T]`` (any dimensions between, e.g. ``layers, heads``); ``valid`` is
    a boolean ``[batch, T]`` mask of real tokens (default: all real); ``special``/``punctuation`` are
    boolean ``[batch, T]`` masks of keys (missing ones give 0). Computation is vectorised over every
    dimension; values are float32 on the weights' device.
    """
    w = weights.float()
    b, t = w.shape[0], w.shape[-1]
    if w.shape[-2] != t:
        raise ValueError(f"metrics need square self-attention [.., T, T], got {tuple(w.shape)}")
    extra = (1,) * (w.dim() - 3)
    if valid is None:
        valid = torch.ones(b, t, dtype=torch.bool, device=w.device)
    valid = valid.to(w.device).bool()
    v = valid.float().reshape(b, *extra, t)
    # One pass zeroes padding rows and columns (cells is the small [b, 1.., T, T] mask).
    cells_mask = (valid[:, :, None] & valid[:, None, :]).float().reshape(b, *extra, t, t)
    w = torch.mul(w, cells_mask)
    n_real = v.sum(-1)
    n = n_real.clamp_min(1.0)  # [b, *extra]

    def rows(x: torch.Tensor, mask: torch.Tensor = v, count: torch.Tensor = n) -> torch.Tensor:
        return (x * mask).sum(-1) / count

    out: dict[str, torch.Tensor] = {}
    # -a ln(a + eps) summed over keys (log computed in place on the one temporary).
    # Full-size temporaries reuse one scratch buffer: fresh [.., T, T] allocations cost more than the math.
    tmp = torch.empty_like(w)
    out["entropy"] = rows(-torch.add(w, EPS, out=tmp).log_().mul_(w).sum(-1))
    if causal:
        keys = torch.log(torch.arange(1, t + 1, device=w.device, dtype=torch.float32))
        out["max_entropy"] = rows(keys)
    else:
        out["max_entropy"] = torch.log(n)
    out["diagonal"] = rows(w.diagonal(dim1=-2, dim2=-1))
    pairs = (n - 1).clamp_min(1.0)
    out["previous_token"] = rows(w.diagonal(offset=-1, dim1=-2, dim2=-1), v[..., 1:], pairs)
    out["next_token"] = rows(w.diagonal(offset=1, dim1=-2, dim2=-1), v[..., 1:], pairs)
    out["first_token"] = rows(w[..., 0])
    zeros = torch.zeros_like(out["first_token"])
    for name, keys_mask in (("special_tokens", special), ("punctuation", punctuation)):
        if keys_mask is None:
            out[name] = zeros
        else:
            km = keys_mask.to(w.device).float().reshape(b, *extra, 1, t)
            out[name] = rows(torch.mul(w, km, out=tmp).sum(-1))
    out["max_weight"] = rows(w.amax(-1))
    cells = n * n
    total = w.sum((-1, -2))
    mean = total / cells
    # two passes (deviations from the mean), not E[w^2] - E[w]^2, which cancels in float32 for
    # near-uniform heads; padding cells are masked out of the deviations.
    dev = torch.sub(w, mean[..., None, None], out=tmp).mul_(cells_mask)
    var = torch.linalg.vector_norm(dev, dim=(-1, -2)).square() / cells
    out["weight_std"] = var.sqrt()
    if sparsity_threshold >= 0:
        # Padding cells are 0 <= threshold: count every cell, then remove the padding ones.
        le = torch.le(w, sparsity_threshold, out=torch.empty(w.shape, dtype=torch.bool, device=w.device))
        small = le.sum((-1, -2), dtype=torch.float32) - (t * t - n_real * n_real)
    else:
        small = torch.mul((w <= sparsity_threshold), cells_mask, out=tmp).sum((-1, -2))
    out["sparsity"] = small / cells
    idx = torch.arange(t, device=w.device, dtype=torch.float32)
    dist = (idx[:, None] - idx[None, :]).abs()
    out["mean_distance"] = rows(torch.mul(w, dist, out=tmp).sum(-1))
    shape = w.shape[:-2]
    return {k: out[k].expand(shape).contiguous() for k in METRICS}

