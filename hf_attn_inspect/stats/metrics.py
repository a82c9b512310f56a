"""Per-head attention metrics as tensor operations: every sentence, layer and head at once.

This is the single implementation of the metric definitions. The tables of
:mod:`hf_attn_inspect.stats.tables`, the pattern classes of :mod:`hf_attn_inspect.stats.patterns`, the
dataset engine, comparison and the explorer all call :func:`sentence_metrics`. Definitions, for one sentence with ``n`` real tokens and weights ``a_ij`` (row
``i`` = query, column ``j`` = key), averaged over the valid query rows ``i < n`` unless said otherwise:

- ``entropy``: ``-sum_j a_ij ln(a_ij + 1e-10)`` in nats; ``max_entropy``: ``ln`` of the number of keys
  row ``i`` may see (``n``; ``i + 1`` for causal models), averaged the same way.
- ``diagonal``: ``a_ii``; ``previous_token``: ``a_i,i-1`` over rows ``i >= 1``; ``next_token``:
  ``a_i,i+1`` over rows ``i <= n-2``; ``first_token``: ``a_i0``.
- ``special_tokens`` / ``punctuation``: total weight on the tokenizer's special tokens / on tokens made
  only of punctuation.
- ``max_weight``: the row maximum ("confidence"); ``mean_distance``: ``sum_j a_ij |i - j|`` in tokens.
- ``local_window``: the weight within ``|i - j| <= w`` tokens of the query (``w`` = ``local_window``,
  default :data:`hf_attn_inspect.core.kernels.LOCAL_WINDOW`, 4), the query itself included.
- ``weight_std``: population standard deviation of all ``n x n`` weights (the chapter's ``weights.std()``);
  ``sparsity``: share of those ``n x n`` weights ``<= sparsity_threshold`` (the chapter's, default 0.3).

Padding rows and columns never count. A metric with no eligible row (``previous_token`` of a one-token
sentence) is 0.

Two derived quantities used by the pattern classes: :func:`entropy_ratio` (``entropy / max_entropy``,
1 for one-token rows) and :func:`column_share` (the largest mean column weight ``max_j mean_i a_ij``).

Every metric is a mean (or, for ``weight_std``/``sparsity``, a pooled statistic) of *per-row* quantities
(:data:`ROW_QUANTITIES`), reduced by :func:`reduce_rows`. :func:`sentence_metrics` computes those rows from
full ``[T, T]`` weights; :func:`hf_attn_inspect.core.kernels.attention_row_stats` computes the same rows
tile by tile from the query and key without ever holding a ``[T, T]`` matrix; both reduce them with
:func:`reduce_rows`.
"""

from __future__ import annotations

import torch

from ..core.errors import InputError
from ..core.kernels import LOCAL_WINDOW
from ..core.masks import all_valid

__all__ = [
    "HEAD_METRICS",
    "METRICS",
    "ROW_QUANTITIES",
    "sentence_metrics",
    "row_quantities",
    "reduce_rows",
    "entropy_ratio",
    "column_share",
    "EPS",
]

EPS = 1e-10

#: The one table of metrics, in output order, with how :func:`reduce_rows` builds each from the per-row
#: quantities: ``row`` = mean over the valid query rows of the row quantity of the same name; ``pair`` =
#: the same over the ``n - 1`` rows that have such a neighbour; ``keys`` = from the number of visible keys;
#: ``cells`` = pooled over the ``n x n`` valid cells through the power sums :data:`_CELL_SUMS`.
_DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("entropy", "row"),
    ("max_entropy", "keys"),
    ("diagonal", "row"),
    ("previous_token", "pair"),
    ("next_token", "pair"),
    ("first_token", "row"),
    ("special_tokens", "row"),
    ("punctuation", "row"),
    ("max_weight", "row"),
    ("weight_std", "cells"),
    ("sparsity", "cells"),
    ("mean_distance", "row"),
    ("local_window", "row"),
)
#: Per-row power sums behind the ``cells`` metrics: ``mass`` (``sum_j a_ij``), ``sq_sum`` (``sum_j a_ij^2``)
#: and ``above`` (number of valid keys with ``a_ij > sparsity_threshold``).
_CELL_SUMS = ("mass", "sq_sum", "above")

#: Names of every metric, in the column order of the per-head tables.
METRICS: tuple[str, ...] = tuple(name for name, _ in _DEFINITIONS)

#: :data:`METRICS` plus ``column_share`` (the largest mean column weight, :func:`column_share`): the per-head
#: values of the dataset statistics, the pattern tables and the pooled captures.
HEAD_METRICS: tuple[str, ...] = METRICS + ("column_share",)

#: Per-row quantities (``[..., T]``, one value per query row) from which :func:`reduce_rows` builds every
#: metric: the ``row``/``pair`` metrics themselves, plus the power sums ``mass``, ``sq_sum`` and ``above``.
ROW_QUANTITIES: tuple[str, ...] = tuple(name for name, kind in _DEFINITIONS if kind in ("row", "pair")) + _CELL_SUMS


def sentence_metrics(
    weights: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    special: torch.Tensor | None = None,
    punctuation: torch.Tensor | None = None,
    causal: bool = False,
    sparsity_threshold: float = 0.3,
    local_window: int = LOCAL_WINDOW,
) -> dict[str, torch.Tensor]:
    """Every metric of the module docstring for each sentence and head: ``{name: [batch, ...]}``.

    ``weights`` is ``[batch, ..., T, T]`` (any dimensions between, e.g. ``layers, heads``); ``valid`` is
    a boolean ``[batch, T]`` mask of real tokens (default: all real); ``special``/``punctuation`` are
    boolean ``[batch, T]`` masks of keys (missing ones give 0); ``local_window`` is the half-width ``w``
    of the ``local_window`` metric in tokens. Computation is vectorised over every dimension; values are
    float32 on the weights' device.
    """
    w = weights.float()
    b, t = w.shape[0], w.shape[-1]
    if w.shape[-2] != t:
        raise InputError(f"metrics need square self-attention [.., T, T], got {tuple(w.shape)}")
    if valid is None:
        valid = all_valid(b, t, w.device)
    rows, w, cells, scratch = _rows(
        w, valid, special=special, punctuation=punctuation, sparsity_threshold=sparsity_threshold,
        local_window=local_window, power_sums=False,
    )
    out = reduce_rows(rows, valid, causal=causal)
    # Two passes (deviations from the mean), not E[w^2] - E[w]^2: that cancels catastrophically in float32
    # for near-uniform heads (tiny std) and made the value depend on the padded size. The streaming path,
    # which never holds the weights, uses the power sums of reduce_rows instead.
    n = valid.to(w.device).float().sum(-1).reshape(b, *(1,) * (w.dim() - 3))
    n_cells = (n * n).clamp_min(1.0)
    mean = w.sum((-1, -2)) / n_cells
    dev = torch.sub(w, mean[..., None, None], out=scratch).mul_(cells)
    std = (torch.linalg.vector_norm(dev, dim=(-1, -2)).square() / n_cells).sqrt()
    out["weight_std"] = std.expand(out["entropy"].shape).contiguous()
    return out


def row_quantities(
    weights: torch.Tensor,
    valid: torch.Tensor,
    *,
    special: torch.Tensor | None = None,
    punctuation: torch.Tensor | None = None,
    sparsity_threshold: float = 0.3,
    local_window: int = LOCAL_WINDOW,
    q_offset: int = 0,
) -> dict[str, torch.Tensor]:
    """The :data:`ROW_QUANTITIES` of full weights ``[batch, ..., T, T]``: ``{name: [batch, ..., T]}``.

    Padding rows and columns (``valid`` False) are zeroed first, so they contribute nothing; row ``i``'s
    ``previous_token`` is ``a_i,i-1`` (0 for ``i = 0``), ``next_token`` is ``a_i,i+1`` (0 for the last row).
    ``weights`` may also be a block of consecutive query rows ``[batch, ..., rows, T]`` starting at query
    ``q_offset`` (every key present): the result is then ``{name: [batch, ..., rows]}``, the same values as
    those rows of the full matrix, so long inputs can be measured block by block.
    """
    w = weights.float()
    return _rows(w, valid, special=special, punctuation=punctuation, sparsity_threshold=sparsity_threshold,
                 local_window=local_window, power_sums=True, q_offset=q_offset)[0]


def _band(w: torch.Tensor, q_offset: int, delta: int) -> torch.Tensor:
    """``a_i,i+delta`` of each row ``i`` of a row block starting at query ``q_offset`` (0 outside the matrix)."""
    tq, t = w.shape[-2], w.shape[-1]
    cols = torch.arange(tq, device=w.device) + q_offset + delta
    inside = (cols >= 0) & (cols < t)
    index = cols.clamp(0, t - 1).reshape(*(1,) * (w.dim() - 2), tq, 1).expand(*w.shape[:-1], 1)
    return torch.where(inside, w.gather(-1, index).squeeze(-1), torch.zeros((), dtype=w.dtype, device=w.device))


def _rows(
    w: torch.Tensor,
    valid: torch.Tensor,
    *,
    special: torch.Tensor | None,
    punctuation: torch.Tensor | None,
    sparsity_threshold: float,
    local_window: int,
    power_sums: bool,
    q_offset: int = 0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row quantities plus the padding-zeroed weights, the cell mask and a scratch buffer for reuse.

    Every full-size temporary goes into one scratch buffer: on CPU, fresh ``[.., T, T]`` allocations
    cost more than the arithmetic. ``w`` may be the query rows ``q_offset ..`` of the matrix.
    """
    b, t = w.shape[0], w.shape[-1]
    tq = w.shape[-2]
    extra = (1,) * (w.dim() - 3)
    valid = valid.to(w.device).bool()
    cells = (valid[:, q_offset : q_offset + tq, None] & valid[:, None, :]).float().reshape(b, *extra, tq, t)
    if not bool(valid.all()):  # nothing to zero when every token is real (a pass saved on long inputs)
        w = torch.mul(w, cells)
    tmp = torch.empty_like(w)
    qidx = torch.arange(q_offset, q_offset + tq, device=w.device, dtype=torch.float32)
    idx = torch.arange(t, device=w.device, dtype=torch.float32)
    dist = (qidx[:, None] - idx[None, :]).abs()
    rows: dict[str, torch.Tensor] = {}
    rows["entropy"] = -torch.add(w, EPS, out=tmp).log_().mul_(w).sum(-1)
    rows["diagonal"] = _band(w, q_offset, 0)
    rows["previous_token"] = _band(w, q_offset, -1)
    rows["next_token"] = _band(w, q_offset, 1)
    rows["first_token"] = w[..., 0]
    given = [(n, km) for n, km in (("special_tokens", special), ("punctuation", punctuation)) if km is not None]
    if given:  # both key shares in one product: one read of w, no [.., T, T] temporary
        keys = torch.stack([km.to(w.device).float() for _, km in given], -1).reshape(b, *extra, t, len(given))
        shares = torch.matmul(w, keys)
        for c, (name, _) in enumerate(given):
            rows[name] = shares[..., c]
    for name in ("special_tokens", "punctuation"):
        if name not in rows:
            rows[name] = torch.zeros_like(rows["first_token"])
    rows["max_weight"] = w.amax(-1)
    rows["mean_distance"] = torch.mul(w, dist, out=tmp).sum(-1)
    if 2 * local_window + 1 <= t // 4:  # a narrow band: its 2w + 1 diagonals, not a pass over the matrix
        rows["local_window"] = torch.stack([_band(w, q_offset, d) for d in range(-local_window, local_window + 1)]).sum(0)
    else:
        rows["local_window"] = torch.mul(w, (dist <= local_window).float(), out=tmp).sum(-1)
    if power_sums:  # only weight_std's power sums need these; sentence_metrics computes it in two passes
        rows["mass"] = w.sum(-1)
        rows["sq_sum"] = torch.linalg.vector_norm(w, dim=-1).square()
    if sparsity_threshold >= 0:  # padding cells are 0, never above a non-negative threshold
        above = torch.gt(w, sparsity_threshold, out=torch.empty(w.shape, dtype=torch.bool, device=w.device))
        rows["above"] = above.sum(-1, dtype=torch.float32)
    else:
        rows["above"] = torch.mul((w > sparsity_threshold).float(), cells, out=tmp).sum(-1)
    return rows, w, cells, tmp


def reduce_rows(rows: dict[str, torch.Tensor], valid: torch.Tensor, *, causal: bool = False) -> dict[str, torch.Tensor]:
    """Turn per-row quantities ``{name: [batch, ..., T]}`` into the :data:`METRICS` ``{name: [batch, ...]}``.

    Row metrics are averaged over the valid query rows (``previous_token``/``next_token`` over the
    ``n - 1`` rows that have such a neighbour); ``max_entropy`` follows from ``valid`` and ``causal``;
    ``weight_std`` and ``sparsity`` pool the ``n x n`` valid cells. This is the one place where rows
    become metrics, for the materialised and the streaming paths alike.
    """
    ref = rows["entropy"]
    b, t = valid.shape
    extra = (1,) * (ref.dim() - 2)
    v = valid.to(ref.device).float().reshape(b, *extra, t)
    n_raw = v.sum(-1)
    n = n_raw.clamp_min(1.0)

    def mean(x: torch.Tensor, count: torch.Tensor = n) -> torch.Tensor:
        return (x.float() * v).sum(-1) / count

    out: dict[str, torch.Tensor] = {}
    pairs = (n - 1).clamp_min(1.0)
    for name, kind in _DEFINITIONS:
        if kind == "row":
            out[name] = mean(rows[name])
        elif kind == "pair":
            out[name] = mean(rows[name], pairs)
    if causal:
        keys = torch.log(torch.arange(1, t + 1, device=ref.device, dtype=torch.float32))
        out["max_entropy"] = mean(keys)
    else:
        out["max_entropy"] = torch.log(n)
    cells = n * n
    if "sq_sum" in rows:  # power sums (streaming); sentence_metrics replaces this by a two-pass value
        avg = mean(rows["mass"], 1.0) / cells
        var = (mean(rows["sq_sum"], 1.0) / cells - avg.square()).clamp_min(0.0)
        out["weight_std"] = var.sqrt()
    else:
        out["weight_std"] = torch.zeros_like(out["entropy"])
    out["sparsity"] = (n_raw * n_raw - mean(rows["above"], 1.0)) / cells
    shape = ref.shape[:-1]
    return {k: out[k].expand(shape).contiguous() for k in METRICS}


def entropy_ratio(entropy: torch.Tensor, max_entropy: torch.Tensor) -> torch.Tensor:
    """``entropy / max_entropy`` elementwise: 1 means the head is as spread out as the visible keys allow.

    ``entropy`` and ``max_entropy`` are the metrics of the same name (nats, any matching shape). Where
    ``max_entropy`` is 0 (one-token sentences: a single key, no choice) the ratio is 1. Used by the pattern
    classes (``uniform``/``broad``), the monitor and the diagnosis.
    """
    return torch.where(max_entropy > 0, entropy / max_entropy.clamp_min(1e-12), torch.ones_like(max_entropy))


def column_share(weights: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest mean column weight ``max_j mean_i a_ij`` of each sentence and head, and its key ``j``.

    ``weights`` is ``[batch, ..., T, T]``; ``valid`` the boolean ``[batch, T]`` mask of real tokens
    (default: all real). The mean runs over the ``n`` valid query rows and only valid keys compete, so
    padding never counts. A share near 1 means every query puts its weight on the same key (a "column"
    head, e.g. on ``[CLS]``/``[SEP]``). Returns ``(share, key)``, float32 and int64 ``[batch, ...]``.
    """
    w = weights.float()
    b, t = w.shape[0], w.shape[-1]
    extra = (1,) * (w.dim() - 3)
    if valid is None:
        valid = all_valid(b, t, w.device)
    v = valid.to(w.device).float()
    cols = torch.matmul(v.reshape(b, *extra, 1, t), w).squeeze(-2)  # sum over the valid query rows
    cols = cols * v.reshape(b, *extra, t) / v.sum(-1).clamp_min(1.0).reshape(b, *extra, 1)
    share, key = cols.max(-1)
    return share, key
