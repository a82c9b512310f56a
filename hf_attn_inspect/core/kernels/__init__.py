"""The attention kernels: every way hf-attn-inspect computes attention, behind one interface.

All kernels take the same arguments, in the layout of transformers' attention functions:

- ``query`` ``[batch, heads, T, d]``, ``key``/``value`` ``[batch, kv_heads, S, d]`` with ``kv_heads``
  dividing ``heads`` (grouped-query attention: query head ``h`` uses key head ``h // (heads // kv_heads)``);
- ``mask``: None, a tensor broadcasting to ``[batch, 1|heads, T, S]`` read by
  :func:`~hf_attn_inspect.core.masks.mask_to_keep` (boolean/integer/0-1 float = keep, other float =
  additive), or, for the output and statistics kernels, a :class:`~hf_attn_inspect.core.masks.LazyMask`
  evaluated tile by tile;
- ``scale`` (default ``1/sqrt(d)``) and, where supported, a Gemma-2 style ``softcap``.

Weights are always ``softmax(q k^T * scale (+ softcap) + mask)`` with the scores and softmax in float32,
masked keys exactly 0 and fully masked rows all 0. The kernels differ only in what they return:

- :func:`scaled_dot_product_attention_with_weights` -> ``(output, weights)``: the reference, exact for
  every mask and dtype; every weight shown to a user comes from it.
- :func:`fast_attention_with_weights` -> ``(output, weights)``: the same numbers for the common case
  (float32, no grouped heads, additive or no mask) without the reference's mask analysis, written into
  a reusable buffer.
- :func:`fast_attention_output` -> ``output``: torch's fused ``scaled_dot_product_attention``, for
  probes that need the layer's output but compute no weights.
- :func:`attention_row_stats` -> ``{name: [batch, heads, T]}``: the per-row statistics of the weights
  (entropy, neighbour shares, distances, ... the row quantities of
  :mod:`hf_attn_inspect.stats.metrics`), streamed from ``query`` and ``key`` in ``[q_tile, k_tile]``
  blocks, so no ``[T, S]`` matrix is ever held.

- :func:`attention_output_row_stats` -> ``(output, rows, column_sums)``: the CPU path of the dataset
  engines at paragraph and document length: the output and the same rows in one pass over
  score tiles (a block of heads of one sequence) of each sequence's own keys (:mod:`.cpu_tiles`).

- :func:`fused_attention_stats` -> ``(output, rows)``: a fused Triton kernel (CUDA; CPU only through
  Triton's interpreter, for tests) giving the output and the rows of :func:`attention_row_stats` (plus the
  column sums behind ``column_share``) in one flash-style pass; :func:`fused_available` says whether it
  runs on a device. Triton is imported on first use only.

Fused kernels live here and only here; the PyTorch code stays the fallback and the reference their tests
compare against. The statistics probes of :mod:`hf_attn_inspect.stats` and :mod:`hf_attn_inspect.runs`
call the fused kernel on CUDA and the PyTorch kernels elsewhere.

One module per kernel family, every public name re-exported here: :mod:`.reference` (the reference, the
fast CPU path, the fused-sdpa output, :func:`repeat_kv`), :mod:`.cpu_stats` (the tiled statistics),
:mod:`.fused` (the fused kernel's host side) with :mod:`.triton_kernel` (its Triton source), and
:mod:`.common` (what they share).
"""

from . import common, cpu_stats, cpu_tiles, fused, reference
from .common import LOCAL_WINDOW
from .cpu_stats import attention_row_stats
from .cpu_tiles import (
    TILE_MIN_LENGTH,
    TilePlan,
    TileWorkspace,
    attention_output_row_stats,
    plan_tiles,
    single_threaded,
)
from .fused import (
    FUSED_ENV,
    FusedLayout,
    FusedMasks,
    fused_attention_packed,
    fused_attention_stats,
    fused_available,
    fused_masks,
)
from .reference import (
    fast_attention_output,
    fast_attention_with_weights,
    repeat_kv,
    scaled_dot_product_attention_with_weights,
)

__all__ = [*common.__all__, *reference.__all__, *cpu_stats.__all__, *cpu_tiles.__all__, *fused.__all__]
