"""Long generations within the memory budget: full rows where they fit, row statistics where they do not."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..capture.inspector import AttentionInspector
from ..capture.result import GenerationResult
from ..core.errors import InputError, MemoryBudgetError
from ..core.memory import format_bytes, memory_budget
from ..stats.generation import GenerationRowStatsRecorder
from ..stats.metrics import ROW_QUANTITIES

__all__ = ["generate_within_budget"]


def generate_within_budget(
    inspector: AttentionInspector,
    prompt: str | torch.Tensor,
    *,
    max_new_tokens: int = 20,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    max_memory: int | str | None = None,
    **kwargs: Any,
) -> GenerationResult:
    """:meth:`AttentionInspector.generate` of one prompt that never keeps ``[T, T]`` rows beyond the memory budget.

    When the full rows of ``layers`` (default: every layer) fit the budget (``max_memory``; default half of the
    memory available), this is ``inspector.generate``. Otherwise the generating stack's row statistics
    (:data:`~hf_attn_inspect.stats.metrics.ROW_QUANTITIES` of every position's row: entropy, max weight, first
    token...) are kept for every layer (``result.row_stats``, ``[layers, heads, T]`` each, ``row_stats_layers``)
    and the full rows only for the last of ``layers`` that fit next to them (``result.layer_ids``); when not
    even one layer fits, :class:`~hf_attn_inspect.core.errors.MemoryBudgetError` names the sizes and the ways out.
    Other keyword arguments are :meth:`~AttentionInspector.generate`'s.
    """
    if not isinstance(prompt, (str, torch.Tensor)) or (isinstance(prompt, torch.Tensor) and prompt.dim() == 2
                                                       and prompt.shape[0] != 1):
        raise InputError("generate_within_budget takes one prompt")
    budget = memory_budget(max_memory, inspector.device)
    n_layers, n_heads = inspector.dims()["decoder" if inspector.is_encoder_decoder else "self"]
    wanted = sorted(set(layers)) if layers is not None else list(range(n_layers))
    full = inspector.generation_estimate(prompt, max_new_tokens, wanted, heads)
    if full.total <= budget.bytes:
        return inspector.generate(prompt, max_new_tokens=max_new_tokens, layers=layers, heads=heads,
                                  max_memory=max_memory, **kwargs)
    one = inspector.generation_estimate(prompt, max_new_tokens, wanted[:1], heads).total
    rows = _positions(inspector, full.total, len(wanted), heads, n_heads)
    stats = 2 * n_layers * n_heads * rows * len(ROW_QUANTITIES) * 4
    fit = int(max(budget.bytes - stats, 0) // max(one, 1))
    if fit == 0:
        raise MemoryBudgetError(
            f"the full rows of one layer of this generation need about {format_bytes(one)} next to "
            f"{format_bytes(stats)} of row statistics, more than the memory budget of {budget.describe()}; keep "
            "fewer heads (heads=[...]), generate fewer tokens, or raise the budget (max_memory= / --max-memory)",
            estimate=one + stats, budget=budget.bytes)
    keep = wanted[-fit:]
    recorder = GenerationRowStatsRecorder()
    result = inspector.generate(prompt, max_new_tokens=max_new_tokens, layers=keep, heads=heads,
                                max_memory=budget.bytes, recorders=[recorder], **kwargs)
    t = len(result.sequence_tokens)
    ids = sorted(recorder.stats)
    result.row_stats = {name: torch.stack([recorder.stats[i][name][0, :, :t] for i in ids]) for name in ROW_QUANTITIES
                        if ids and name in recorder.stats[ids[0]]}
    result.row_stats_layers = ids
    return result


def _positions(inspector: AttentionInspector, full_bytes: int, layers: int, heads: Sequence[int] | None, n_heads: int) -> int:
    """Positions of the generating stack, from the full estimate of a decoder-only model (``2 L H T^2 4``
    bytes); encoder-decoder estimates include the encoder and cross rows, so this is an upper bound."""
    h = n_heads if heads is None else len(heads)
    return int((full_bytes / (8 * max(layers, 1) * max(h, 1))) ** 0.5) + 1
