"""Per-head attention statistics of a model run, streamed tile by tile from the query and key: no ``[T, T]`` matrix.

Long inputs cannot have their attention weights materialised (one 32-head layer at 32k tokens is 128 GiB
in float32). :class:`StreamingStatsRecorder` receives every attention call through the one capture path
(:mod:`hf_attn_inspect.capture.interface`). On CUDA (Triton installed) it replaces the attention call by the
fused kernel :func:`~hf_attn_inspect.core.kernels.fused_attention_stats`: output and statistics in one pass,
each layer's rows left in one packed device buffer, the per-sentence reductions run once per batch for
all layers and heads together, one transfer per batch (:meth:`StreamingStatsRecorder.finish`).
Elsewhere (CPU, or masks the kernel does not take) it computes the layer's output with
:func:`~hf_attn_inspect.core.kernels.fast_attention_output` (torch's fused ``scaled_dot_product_attention``;
the model's forward pass is unchanged up to sdpa rounding) and the per-row quantities of
:mod:`hf_attn_inspect.stats.metrics` (:data:`~hf_attn_inspect.stats.metrics.ROW_QUANTITIES`: entropy,
diagonal, previous/next token, first token (sink share), special tokens, punctuation, max weight, mean
distance, local-window share, and the sums behind ``weight_std``/``sparsity``) with the tiled kernel
:func:`~hf_attn_inspect.core.kernels.attention_row_stats`. It never builds the model's ``[B, 1, T, T]``
mask either: the attention implementation :data:`STREAMING_NAME` hands it a
:class:`~hf_attn_inspect.core.masks.LazyMask` that evaluates transformers' own mask function block by block.

Peak memory is a few reused ``[batch, heads, q_tile, k_tile]`` buffers plus ``O(T)`` per head. The rows are reduced
to metrics by :func:`hf_attn_inspect.stats.metrics.reduce_rows`, the same function that reduces the rows of
materialised weights, so both paths share every definition. :func:`streaming_metrics` does this for one
call's query and key; :func:`run_streaming` runs one batch through a model; :func:`streaming_head_metrics`
runs texts and returns the one-row-per-(layer, head) table of
:func:`hf_attn_inspect.stats.tables.head_metrics`, without ever holding weights.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch

from ..capture.inputs import Batch, KeyMasks
from ..capture.inspector import AttentionInspector
from ..capture.interface import Site, register_implementation
from ..capture.recorders import AttentionCall, Recorder
from ..core.errors import CaptureError, InputError
from ..core.kernels import (
    LOCAL_WINDOW,
    FusedLayout,
    FusedMasks,
    attention_row_stats,
    fast_attention_output,
    fused_attention_packed,
    fused_available,
    fused_masks,
)
from ..core.stacks import is_self_attention, main_stack
from ..core.masks import LazyMask, all_valid, lazy_mask
from .metrics import METRICS, reduce_rows, row_quantities
from .tables import head_frame

__all__ = [
    "STREAMING_NAME",
    "DISTANCE_EDGES",
    "DISTANCE_BUCKETS",
    "distance_bucket_mass",
    "streaming_metrics",
    "row_stats_options",
    "StreamingStatsRecorder",
    "streaming_head_metrics",
    "run_streaming",
]

#: Attention implementation name under which the streaming probe's mask function is registered.
STREAMING_NAME = register_implementation("hf_attn_inspect_streaming", lazy_mask)

#: Upper edges (inclusive, in tokens of ``|i - j|``) of the distance buckets: 0, 1, 2-4, 5-16, ..., >4096.
DISTANCE_EDGES: tuple[int, ...] = (0, 1, 4, 16, 64, 256, 1024, 4096)
#: Labels of the buckets delimited by :data:`DISTANCE_EDGES` (the last one is open-ended).
DISTANCE_BUCKETS: tuple[str, ...] = ("0", "1", "2-4", "5-16", "17-64", "65-256", "257-1024", "1025-4096", ">4096")


def distance_bucket_mass(within: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Weight per distance bucket ``[..., E + 1]`` from cumulative ``within`` ``[..., E]`` and total ``mass`` ``[...]``.

    Bucket ``0`` is ``|i - j| <= edge_0``, bucket ``k`` is ``edge_{k-1} < |i - j| <= edge_k``, the last one
    is beyond the last edge; the buckets of a row sum to its ``mass`` (1 for a real row).
    """
    cum = torch.cat([within, mass.unsqueeze(-1)], -1)
    return torch.diff(cum, dim=-1, prepend=torch.zeros_like(cum[..., :1])).clamp_min(0.0)


def streaming_metrics(
    query: torch.Tensor,
    key: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    causal: bool = False,
    **kwargs: torch.Tensor | LazyMask | float | int | Sequence[int] | None,
) -> dict[str, torch.Tensor]:
    """The :data:`~hf_attn_inspect.stats.metrics.METRICS` ``{name: [batch, heads]}`` of one attention call, streamed.

    Same numbers as :func:`~hf_attn_inspect.stats.metrics.sentence_metrics` on the materialised weights:
    ``valid`` (boolean ``[batch, T]``, default all real) selects the query rows that count and zeroes
    padding keys; ``causal`` also sets ``max_entropy``'s definition. Other keyword arguments (``mask``,
    ``window``, ``special``, ``punctuation``, ``softcap``, tiles...) go to
    :func:`~hf_attn_inspect.core.kernels.attention_row_stats`.
    """
    b, t = query.shape[0], query.shape[-2]
    if valid is None:
        valid = all_valid(b, t, query.device)
    kwargs.setdefault("key_valid", valid)
    rows = attention_row_stats(query, key, causal=causal, **kwargs)
    return reduce_rows(rows, valid.to(query.device), causal=causal)


# --------------------------------------------------------------------------------------- recorder
def row_stats_options(call: AttentionCall, km: KeyMasks | None) -> tuple[dict[str, Any], bool]:
    """The keyword arguments of :func:`~hf_attn_inspect.core.kernels.attention_row_stats` for one attention
    call, and whether its mask is a plain pattern.

    A plain causal or bidirectional :class:`~hf_attn_inspect.core.masks.LazyMask` becomes ``causal`` plus a
    ``[batch, 1, 1, S]`` key-padding mask (positions give causality, so tiles outside the band are skipped);
    other lazy masks stay as they are (causal where the model is, sliding ``window`` from the call); a tensor
    mask already says everything. ``km`` (the stack's key masks on the call's device, or None: every key
    real, none special or punctuation) gives ``key_valid``, ``special`` and ``punctuation``.
    """
    mask = call.mask
    stats_mask, plain = mask, True
    if isinstance(mask, LazyMask):
        pad = mask.key_padding
        if (mask.plain_causal or mask.bidirectional) and mask.q_offset == 0 and mask.kv_offset == 0:
            stats_mask = None if pad is None else pad[:, None, None, :]
            causal = mask.plain_causal
        else:
            causal = call.causal and not mask.use_vmap and not mask.bidirectional
            plain = False
    else:
        causal = False  # a tensor mask already says everything; no index shortcut
    window = call.kwargs.get("sliding_window") or None
    options = dict(
        scale=call.scaling,
        mask=stats_mask,
        causal=causal,
        window=window if causal else None,
        key_valid=None if km is None else km.valid,
        special=None if km is None else km.special,
        punctuation=None if km is None else km.punctuation,
        softcap=call.softcap,
    )
    return options, plain


class StreamingStatsRecorder(Recorder):
    """A recorder that computes each attention call itself and keeps per-row attention statistics instead of weights.

    For every self-attention call (``self``/``encoder``/``decoder`` stacks; ``cross`` attention only
    gets its output computed), :meth:`compute` returns the output and stores the row statistics as float32
    CPU tensors in ``rows[stack][layer]`` (``{name: [batch, heads, T]}``); it returns no weights. On CUDA
    both come from the fused kernel :func:`~hf_attn_inspect.core.kernels.fused_attention_stats` (rows copied
    asynchronously to pinned memory, metrics kept on the device; :meth:`finish`, which
    :meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.run` calls after the forward pass, makes
    them readable with one transfer), elsewhere from torch's fused sdpa and
    :func:`~hf_attn_inspect.core.kernels.attention_row_stats`. ``masks`` maps a stack
    to its :class:`~hf_attn_inspect.capture.inputs.KeyMasks` (``batch.stack_masks()``: padding keys zeroed,
    special/punctuation shares; a stack without masks counts every token as real and none as special or
    punctuation); ``layers`` restricts which layers are measured;
    ``distance_edges`` adds the cumulative ``within`` rows; ``keep`` limits which rows are stored (by
    default all of :data:`~hf_attn_inspect.stats.metrics.ROW_QUANTITIES`, ``lse`` and ``within``). Models that
    do not dispatch through transformers' attention interface reach :meth:`record` with full weights
    (eager fallback), whose rows are then computed by :func:`~hf_attn_inspect.stats.metrics.row_quantities`.
    With ``reduce=True`` only the metrics ``metrics[stack][layer]`` (``{metric: [batch, heads]}``) are kept.
    """

    implementation = STREAMING_NAME

    def __init__(
        self,
        masks: dict[str, KeyMasks] | None = None,
        *,
        layers: Sequence[int] | None = None,
        sparsity_threshold: float = 0.3,
        local_window: int = LOCAL_WINDOW,
        distance_edges: Sequence[int] | None = None,
        q_tile: int = 256,
        k_tile: int = 1024,
        keep: Sequence[str] | None = None,
        reduce: bool = False,
    ) -> None:
        self.masks = masks or {}
        self.reduce = reduce
        self.metrics: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        self.layers = None if layers is None else set(layers)
        self.sparsity_threshold = sparsity_threshold
        self.local_window = local_window
        self.distance_edges = tuple(distance_edges) if distance_edges else None
        self.q_tile, self.k_tile = q_tile, k_tile
        self.keep = None if keep is None else set(keep)
        self.rows: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        self.causal: dict[str, bool] = {}
        self._on_device: dict[str, KeyMasks] = {}
        self._pending = False
        # fused path: the prepared key masks per stack (built once per batch) and, with reduce=True, the
        # packed row buffers per (stack, causal), reduced for all layers at once in finish()
        self._fused_masks: dict[str, tuple[object, FusedMasks]] = {}
        self._packed: dict[tuple[str, bool], list[tuple[int, torch.Tensor]]] = {}
        self._layout: FusedLayout | None = None

    def _wanted(self, site: Site) -> bool:
        return is_self_attention(site.stack) and (self.layers is None or site.layer in self.layers)

    def _store(self, site: Site, rows: dict[str, torch.Tensor], causal: bool = False) -> None:
        """Keep one layer's rows (or metrics) without synchronising with the device.

        Metrics (``reduce=True``) stay on the device until :meth:`finish` moves them in one transfer;
        rows go to pinned host memory with asynchronous copies (CUDA) that :meth:`finish` waits for.
        """
        if self.reduce:
            metrics = reduce_rows(rows, self._valid_for(site.stack, rows["entropy"]), causal=causal)
            self.metrics.setdefault(site.stack, {})[site.layer] = {k: v.detach() for k, v in metrics.items()}
            self.rows.setdefault(site.stack, {})[site.layer] = {}
            self._pending = True
            return
        kept = {k: _to_host(v.float()) for k, v in rows.items() if self.keep is None or k in self.keep}
        self.rows.setdefault(site.stack, {})[site.layer] = kept
        self._pending = True

    def _store_packed(self, site: Site, packed: torch.Tensor, layout: FusedLayout, causal: bool) -> None:
        """Keep one layer's packed fused-kernel rows without synchronising: for :meth:`finish` to reduce
        (``reduce=True``), or copied to pinned host memory in one asynchronous transfer."""
        self._layout = layout
        self._pending = True
        if self.reduce:
            self._packed.setdefault((site.stack, causal), []).append((site.layer, packed))
            self.rows.setdefault(site.stack, {})[site.layer] = {}
            return
        host = layout.rows(_to_host(packed))
        self.rows.setdefault(site.stack, {})[site.layer] = {
            k: v for k, v in host.items() if self.keep is None or k in self.keep}

    def _reduce_packed(self) -> None:
        """The metrics of every pending fused layer: one stack, one :func:`reduce_rows`, one transfer per group."""
        for (stack, causal), items in self._packed.items():
            big = torch.stack([p for _, p in items], 2)  # [P, batch, layers, heads, T]
            rows = self._layout.rows(big)
            metrics = reduce_rows(rows, self._valid_for(stack, rows["entropy"]), causal=causal)  # {metric: [batch, layers, heads]}
            dense = torch.stack([metrics[k] for k in METRICS], 0).permute(2, 0, 1, 3)  # [layers, M, batch, heads]
            host = dense.contiguous().cpu() if dense.device.type != "cpu" else dense
            for (layer, _), per_layer in zip(items, host.unbind(0)):
                self.metrics.setdefault(stack, {})[layer] = dict(zip(METRICS, per_layer.unbind(0)))
        self._packed.clear()

    def finish(self) -> None:
        """Bring everything to the CPU: the fused layers' metrics reduced together and moved in one transfer,
        the other metrics in one transfer, one wait for the rows' copies.

        Called by :func:`run_streaming` after the model ran; idempotent.
        """
        if not self._pending:
            return
        self._pending = False
        fused_layers = {(stack, layer) for (stack, _), items in self._packed.items() for layer, _ in items}
        self._reduce_packed()
        flat = [(stack, layer, name, v) for stack, layers in self.metrics.items()
                for layer, found in layers.items() for name, v in found.items()
                if (stack, layer) not in fused_layers]
        if flat and flat[0][3].device.type != "cpu":
            host = torch.cat([v.float().reshape(-1) for *_, v in flat]).cpu()
            start = 0
            for stack, layer, name, v in flat:
                self.metrics[stack][layer][name] = host[start : start + v.numel()].reshape(v.shape)
                start += v.numel()
        if any(v.is_pinned() for layers in self.rows.values() for found in layers.values() for v in found.values()):
            torch.cuda.synchronize()

    def compute(self, call: AttentionCall) -> tuple[torch.Tensor, None]:
        """The layer's output from the fused kernel; the call's row statistics go to ``rows`` (or ``metrics``)."""
        site, query, key, value, mask, scaling = call.site, call.query, call.key, call.value, call.mask, call.scaling
        softcap = call.softcap
        if not self._wanted(site):
            return fast_attention_output(query, key, value, mask, scale=scaling, softcap=softcap), None
        dev = query.device
        km = self._device_masks(site.stack, dev)
        is_causal = call.causal
        self.causal[site.stack] = self.causal.get(site.stack, False) or is_causal
        common, plain = row_stats_options(call, km)
        stats_mask, causal = common["mask"], common["causal"]
        common.update(sparsity_threshold=self.sparsity_threshold, local_window=self.local_window,
                      distance_edges=self.distance_edges)
        if plain and self.sparsity_threshold >= 0 and query.shape[-1] <= 256 and fused_available(dev):
            # one fused kernel: the layer's output and its statistics in the same pass; the key masks
            # are prepared once per batch, the rows stay packed in one buffer (a few host ops per layer)
            cached = self._fused_masks.get(site.stack)
            b, s = query.shape[0], key.shape[2]
            if cached is None or cached[0] is not mask or tuple(cached[1].bits.shape) != (b, s) \
                    or cached[1].bits.device != dev or cached[1].causal != causal:
                fm = fused_masks(b, s, dev, mask=stats_mask, causal=causal, key_valid=common["key_valid"],
                                 special=common["special"], punctuation=common["punctuation"])
                cached = (mask, fm)
                self._fused_masks[site.stack] = cached
            output, packed, _, layout = fused_attention_packed(
                query, key, value, cached[1], scale=scaling, window=common["window"], softcap=softcap,
                sparsity_threshold=self.sparsity_threshold, local_window=self.local_window,
                distance_edges=self.distance_edges,
                count_above=self.reduce or self.keep is None or "above" in self.keep,
            )
            self._store_packed(site, packed, layout, is_causal)
            return output, None
        output = fast_attention_output(query, key, value, mask, scale=scaling, softcap=softcap)
        rows = attention_row_stats(query, key, q_tile=self.q_tile, k_tile=self.k_tile, **common)
        self._store(site, rows, is_causal)
        return output, None

    def _valid_for(self, stack: str, ref: torch.Tensor) -> torch.Tensor:
        """The stack's valid-token mask ``[batch, T]`` on ``ref``'s device (``ref``: a ``[batch, ..., T]`` row
        tensor); every token valid when the stack has no masks."""
        km = self._device_masks(stack, ref.device)
        return km.valid if km is not None else all_valid(ref.shape[0], ref.shape[-1], ref.device)

    def _device_masks(self, stack: str, device: torch.device) -> KeyMasks | None:
        """The stack's key masks on ``device``, copied there once per probe (not once per layer)."""
        km = self.masks.get(stack)
        if km is None:
            return None
        cached = self._on_device.get(stack)
        if cached is None or cached.valid.device != device:
            cached = KeyMasks(km.valid.to(device), km.special.to(device), km.punctuation.to(device))
            self._on_device[stack] = cached
        return cached

    def record(self, call: AttentionCall) -> None:
        """Eager fallback: the row statistics of full weights ``[batch, heads, T, T]`` (self-attention only)."""
        site, weights = call.site, call.weights
        if not self._wanted(site) or weights.shape[-1] != weights.shape[-2]:
            return
        km = self.masks.get(site.stack)
        b, t = weights.shape[0], weights.shape[-1]
        valid = km.valid if km is not None else all_valid(b, t)
        w = weights.float()
        rows = row_quantities(w, valid.to(w.device), special=None if km is None else km.special,
                              punctuation=None if km is None else km.punctuation,
                              sparsity_threshold=self.sparsity_threshold, local_window=self.local_window)
        if self.distance_edges:
            idx = torch.arange(t, device=w.device)
            dist = (idx[:, None] - idx[None, :]).abs()
            w0 = w * valid.to(w.device).float().reshape(b, *(1,) * (w.dim() - 3), 1, t)
            rows["within"] = torch.stack([(w0 * (dist <= e)).sum(-1) for e in self.distance_edges], -1)
        self.causal[site.stack] = self.causal.get(site.stack, False) or call.causal
        self._store(site, rows, call.causal)  # a causal model's maximum entropy: row i sees i + 1 keys

    def stacked(self, stack: str) -> dict[str, torch.Tensor]:
        """``{name: [batch, layers, heads, T]}`` of one stack, layers in increasing order."""
        layers = self.rows.get(stack, {})
        if not layers:
            return {}
        order = sorted(layers)
        names = layers[order[0]].keys()
        return {n: torch.stack([layers[i][n] for i in order], 1) for n in names}


def _to_host(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 on the CPU; from CUDA an asynchronous copy into pinned memory (wait before reading)."""
    x = x.detach()
    if x.device.type != "cuda":
        return x.to(torch.float32)
    host = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(x, non_blocking=True)
    return host


# ------------------------------------------------------------------------------------- high level
def run_streaming(inspector: AttentionInspector, batch: Batch, **options: Any) -> StreamingStatsRecorder:
    """Run one encoded ``batch`` through the inspector's model with a :class:`StreamingStatsRecorder`; return the recorder.

    ``options`` are the recorder's keyword options (``layers``, ``sparsity_threshold``, ``local_window``,
    ``distance_edges``, ``q_tile``, ``k_tile``, ``keep``, ``reduce``; an unknown one raises ``TypeError``).
    Only the model's backbone (``model.base_model``) runs, so no language-model head turns a long input
    into a ``[T, vocab]`` logits tensor. The recorder's ``rows`` hold the per-row statistics (``O(layers x
    heads x T)`` floats on CPU), or with ``reduce=True`` only ``recorder.metrics[stack][layer]`` (``{metric:
    [batch, heads]}``); the stacks' causality is in ``recorder.causal`` (and, after the run, in
    ``batch.causal_stacks``). The key masks are the batch's own (:meth:`~hf_attn_inspect.capture.inputs.Batch.stack_masks`).
    """
    recorder = StreamingStatsRecorder(batch.stack_masks(), **options)
    inspector.backbone.run(batch, recorder)  # run() calls recorder.finish()
    for stack in batch.causal_stacks:
        recorder.causal[stack] = True
    if not recorder.rows:
        raise CaptureError(f"{type(inspector.model).__name__} produced no self-attention statistics")
    return recorder


def streaming_head_metrics(
    inspector: AttentionInspector,
    texts: str | Sequence[str],
    pairs: Sequence[str] | None = None,
    *,
    which: str | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    truncation: bool = True,
    sparsity_threshold: float = 0.3,
    local_window: int = LOCAL_WINDOW,
    per_sentence: bool = False,
    q_tile: int = 256,
    k_tile: int = 1024,
) -> pd.DataFrame:
    """One row per (layer, head) with every :data:`~hf_attn_inspect.stats.metrics.METRICS`, never materialising weights.

    The same table as :func:`hf_attn_inspect.stats.tables.head_metrics` on captured results (columns
    ``layer``, ``head`` and the metrics; each sentence weighs the same in the mean; padding never
    counts), computed from the query and key by :func:`~hf_attn_inspect.core.kernels.attention_row_stats`
    while the model runs with
    fused sdpa. Memory is ``O(T)`` per head instead of ``O(T^2)``. ``which`` picks the stack of
    encoder-decoder models (``encoder`` by default, or ``decoder``); ``layers`` restricts the layers;
    ``per_sentence=True`` gives one row per (sentence, layer, head) with a ``sentence`` column.
    """
    if isinstance(texts, str):
        texts = [texts]
        pairs = [pairs] if isinstance(pairs, str) else pairs
    texts = list(texts)
    if not texts:
        raise InputError("no texts given")
    stack = which or main_stack(inspector.is_encoder_decoder)
    per: list[dict[str, torch.Tensor]] = []
    layer_ids: list[int] | None = None
    for batch in inspector.encode_batches(texts, None if pairs is None else list(pairs), batch_size=batch_size,
                                          max_length=max_length, truncation=truncation):
        rec = run_streaming(inspector, batch, layers=layers, sparsity_threshold=sparsity_threshold,
                            local_window=local_window, q_tile=q_tile, k_tile=k_tile, reduce=True)
        if stack not in rec.rows:
            raise InputError(f"no '{stack}' attention in this model; choose one of {sorted(rec.rows)}")
        layer_ids = sorted(rec.rows[stack])
        if stack in rec.metrics:
            found = rec.metrics[stack]
            per.append({k: torch.stack([found[i][k] for i in layer_ids], 1) for k in METRICS})
        else:  # eager fallback: rows from full weights, reduced here
            rows = rec.stacked(stack)
            per.append(reduce_rows(rows, batch.masks(stack).valid, causal=rec.causal.get(stack, False)))
    values = {k: torch.cat([m[k] for m in per], 0).numpy() for k in METRICS}  # [N, L, H]
    head_ids = list(range(values[METRICS[0]].shape[-1]))
    return head_frame(values, METRICS, layer_ids or [], head_ids, per_sentence=per_sentence)
