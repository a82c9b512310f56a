"""Attention of inputs too long for full weights: exact weights computed block of rows by block of rows.

:class:`PooledRecorder` is a :class:`~hf_attn_inspect.capture.recorders.Recorder` that computes attention
itself (:meth:`PooledRecorder.compute`). For every attention call it computes the exact weights with the reference kernel
(:func:`~hf_attn_inspect.core.kernels.scaled_dot_product_attention_with_weights`) for a block of query
rows at a time, the model's mask evaluated for those rows only (:meth:`~hf_attn_inspect.core.masks.LazyMask.block`),
so a layer never holds more than ``chunk_bytes`` of weights. From each block it keeps:

- ``pooled[stack][layer]``: the attention pooled into at most ``max_blocks x max_blocks`` blocks,
  float64 ``[batch, heads, n_q_blocks, n_k_blocks]`` block sums (:func:`block_edges` gives the blocks,
  :func:`pool_blocks` the same sums from a full matrix), never a ``[T, T]`` matrix per head;
- ``weights[stack][layer]``: full float32 ``[batch, len(heads), T_q, T_k]`` weights of the layers and heads
  named in ``full`` only (what a figure draws at full resolution);
- and hands each block to :meth:`PooledRecorder.on_rows`, where subclasses measure it (per-row
  statistics, :class:`hf_attn_inspect.stats.pooled.PooledStatsRecorder`).

The layer's output is the reference kernel's, row block by row block, so the model runs as with the
full-weights capture.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..core.errors import InputError
from ..core.kernels import fast_attention_with_weights, repeat_kv, scaled_dot_product_attention_with_weights
from ..core.masks import LazyMask, keep_to_additive, lazy_mask
from .interface import Site, register_implementation
from .recorders import AttentionCall, Recorder

__all__ = ["POOLED_NAME", "MAX_BLOCKS", "block_edges", "pool_blocks", "PooledRecorder"]

#: Attention implementation under which the recorder receives a :class:`LazyMask` instead of a ``[B, 1, T, S]`` mask.
POOLED_NAME = register_implementation("hf_attn_inspect_pooled", lazy_mask)
#: Most blocks per side of a pooled matrix.
MAX_BLOCKS = 256


def block_edges(n: int, max_blocks: int = MAX_BLOCKS) -> torch.Tensor:
    """Edges ``[0, size, 2 size, ..., n]`` (int64) of at most ``max_blocks`` blocks of ``size = ceil(n / max_blocks)``
    consecutive tokens (the last block may be shorter); block ``i`` holds tokens ``edges[i] <= j < edges[i + 1]``."""
    if n < 1 or max_blocks < 1:
        raise InputError(f"need at least one token and one block, got {n} tokens and {max_blocks} blocks")
    size = -(-int(n) // int(max_blocks))
    return torch.cat([torch.arange(0, n, size, dtype=torch.long), torch.tensor([n])])


def _key_block_sums(w: torch.Tensor, k_edges: torch.Tensor) -> torch.Tensor:
    """Sums over the key blocks of :func:`block_edges` ``[..., rows, n_k_blocks]``, one pass over ``w``."""
    s, nk = w.shape[-1], len(k_edges) - 1
    size = int(k_edges[1] - k_edges[0])
    whole = s // size
    out = w[..., : whole * size].reshape(*w.shape[:-1], whole, size).sum(-1)
    if whole < nk:
        out = torch.cat([out, w[..., whole * size :].sum(-1, keepdim=True)], -1)
    return out


def _one_hot(edges: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[n, blocks]`` matrix with a 1 where token ``j`` lies in block ``b``."""
    n, nb = int(edges[-1]), len(edges) - 1
    ids = torch.bucketize(torch.arange(n), edges[1:], right=True)
    out = torch.zeros(n, nb, dtype=dtype, device=device)
    out[torch.arange(n), ids] = 1
    return out


def pool_blocks(weights: torch.Tensor, q_edges: torch.Tensor, k_edges: torch.Tensor) -> torch.Tensor:
    """Block sums ``[..., n_q_blocks, n_k_blocks]`` (float64) of full weights ``[..., T_q, T_k]``: cell ``(a, b)``
    is the total weight query rows ``q_edges[a] <= i < q_edges[a + 1]`` give to keys ``k_edges[b] <= j < k_edges[b + 1]``."""
    w = weights.double()
    pk = _one_hot(k_edges, w.device, torch.float64)
    pq = _one_hot(q_edges, w.device, torch.float64)
    return pq.transpose(0, 1) @ (w @ pk)


class PooledRecorder(Recorder):
    """Exact attention weights computed a block of query rows at a time; keeps pooled and selected weights.

    ``full`` maps ``(stack, layer)`` to the head indices whose full weights are kept (default none);
    ``pool_layers`` names the layers whose pooled matrices are kept (default all, None; an empty list
    keeps none); ``max_blocks`` bounds the pooled matrices' sides; ``chunk_bytes`` bounds one block of
    float32 weights (``batch x heads x rows x T_k x 4``; at least one row). After a run, ``pooled`` and
    ``weights`` are ``{stack: {layer: tensor}}`` on the CPU and ``edges[stack]`` the ``(q_edges, k_edges)``
    of the stack's pooled blocks.
    """

    implementation = POOLED_NAME

    def __init__(
        self,
        *,
        full: Mapping[tuple[str, int], Sequence[int]] | None = None,
        pool_layers: Sequence[int] | None = None,
        max_blocks: int = MAX_BLOCKS,
        chunk_bytes: int = 64 * 2**20,
    ) -> None:
        if max_blocks < 1:
            raise InputError(f"max_blocks must be at least 1, got {max_blocks}")
        self.full = {key: list(heads) for key, heads in (full or {}).items()}
        self.pool_layers = None if pool_layers is None else set(pool_layers)
        self.max_blocks = int(max_blocks)
        self.chunk_bytes = int(chunk_bytes)
        self.pooled: dict[str, dict[int, torch.Tensor]] = {}
        self.weights: dict[str, dict[int, torch.Tensor]] = {}
        self.edges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._acc: torch.Tensor | None = None
        self._pk: torch.Tensor | None = None
        self._q_ids: torch.Tensor | None = None

    # ----------------------------------------------------------------- hooks
    def on_rows(self, site: Site, module: torch.nn.Module | None, q0: int, weights: torch.Tensor) -> None:
        """Receive the float32 weights ``[batch, heads, rows, T_k]`` of query rows ``q0 ..`` (padding included)."""

    def on_layer_end(self, site: Site, module: torch.nn.Module | None) -> None:
        """Called once a call's every row block went through :meth:`on_rows`."""

    # ------------------------------------------------------------------ work
    def rows_per_chunk(self, batch: int, heads: int, keys: int) -> int:
        """Query rows per block so one float32 block of weights stays within ``chunk_bytes`` (at least 1)."""
        return max(1, self.chunk_bytes // max(1, batch * heads * keys * 4))

    def _start(self, site: Site, b: int, h: int, t: int, s: int, device: torch.device) -> None:
        key = (site.stack, site.layer)
        if key in self.full:
            self.weights.setdefault(site.stack, {})[site.layer] = torch.zeros(b, len(self.full[key]), t, s)
        self._acc = None
        if self.pool_layers is None or site.layer in self.pool_layers:
            q_edges, k_edges = block_edges(t, self.max_blocks), block_edges(s, self.max_blocks)
            self.edges[site.stack] = (q_edges, k_edges)
            self._pk = k_edges
            self._q_ids = torch.bucketize(torch.arange(t), q_edges[1:], right=True).to(device)
            self._acc = torch.zeros(b, h, len(q_edges) - 1, len(k_edges) - 1, dtype=torch.float64, device=device)

    def _take(self, site: Site, module: torch.nn.Module | None, q0: int, w: torch.Tensor) -> None:
        key = (site.stack, site.layer)
        if key in self.full:
            self.weights[site.stack][site.layer][..., q0 : q0 + w.shape[-2], :] = w[:, self.full[key]].to("cpu", torch.float32)
        if self._acc is not None:
            by_key_block = _key_block_sums(w.float(), self._pk).double()  # [B, H, rows, n_k_blocks]
            self._acc.index_add_(-2, self._q_ids[q0 : q0 + w.shape[-2]], by_key_block)
        self.on_rows(site, module, q0, w)

    def _finish(self, site: Site, module: torch.nn.Module | None) -> None:
        if self._acc is not None:
            self.pooled.setdefault(site.stack, {})[site.layer] = self._acc.cpu()
            self._acc = self._pk = self._q_ids = None
        self.on_layer_end(site, module)

    def compute(self, call: AttentionCall) -> tuple[torch.Tensor, None]:
        """The reference kernel's output, computed ``rows_per_chunk`` query rows at a time; no weights returned."""
        site, module, query, key, value, mask, scaling = (
            call.site, call.module, call.query, call.key, call.value, call.mask, call.scaling)
        b, h, t = query.shape[0], query.shape[1], query.shape[2]
        s = key.shape[-2]
        self._start(site, b, h, t, s, query.device)
        step = self.rows_per_chunk(b, h, s)
        softcap = call.softcap
        # float32 without softcap and without padding: the in-place kernel (same numbers, no fresh [rows, S]
        # buffers per block; it differs from the reference only on fully masked rows, which padding alone makes)
        fast = (query.dtype == torch.float32 and key.dtype == torch.float32 and softcap is None
                and (mask is None or (isinstance(mask, LazyMask) and mask.key_padding is None)))
        if fast:
            key_h, value_h = repeat_kv(key, h), repeat_kv(value, h)
        outputs = []
        scratch = None
        for q0 in range(0, t, step):
            q1 = min(t, q0 + step)
            if isinstance(mask, LazyMask):
                rows_mask = mask.block(q0, q1, 0, s)
            elif isinstance(mask, torch.Tensor):
                rows_mask = mask[..., q0:q1, :] if mask.shape[-2] > 1 else mask
            else:
                rows_mask = None
            if fast:
                add = None
                if rows_mask is not None and not bool(rows_mask.all()):
                    add = keep_to_additive(rows_mask, device=query.device)
                out, w = fast_attention_with_weights(query[..., q0:q1, :], key_h, value_h, add, scaling, scratch)
                scratch = w
            else:
                out, w = scaled_dot_product_attention_with_weights(
                    query[..., q0:q1, :], key, value, rows_mask, scale=scaling, softcap=softcap
                )
            outputs.append(out)
            self._take(site, module, q0, w)
            del w
        self._finish(site, module)
        return torch.cat(outputs, dim=-2).to(query.dtype), None

    def record(self, call: AttentionCall) -> None:
        """Eager fallback: the model's full weights ``[batch, heads, T_q, T_k]``, taken block by block."""
        site, weights = call.site, call.weights
        b, h, t, s = weights.shape
        self._start(site, b, h, t, s, weights.device)
        step = self.rows_per_chunk(b, h, s)
        for q0 in range(0, t, step):
            self._take(site, None, q0, weights[..., q0 : q0 + step, :].float())
        self._finish(site, None)
