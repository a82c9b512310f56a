"""What the kernel modules share: the default local window, the argument checks and small tensor helpers."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputError

__all__ = ["LOCAL_WINDOW"]

#: Default half-width ``w`` (in tokens) of the ``local_window`` row quantity: the weight within ``|i - j| <= w``.
LOCAL_WINDOW = 4


def check_rank(query: torch.Tensor, key: torch.Tensor) -> None:
    """Raise :class:`InputError` unless ``query`` and ``key`` are both 4-D (``[batch, heads, tokens, d]``)."""
    if query.dim() != 4 or key.dim() != 4:
        raise InputError(f"query and key must be [batch, heads, T, d], got {tuple(query.shape)} and {tuple(key.shape)}")


def check_query_key(query: torch.Tensor, key: torch.Tensor) -> None:
    """Raise :class:`InputError` unless ``query`` ``[batch, heads, T, d]`` and ``key`` ``[batch, kv_heads, S, d]``
    have a token each and ``kv_heads`` divides ``heads`` (grouped-query attention)."""
    check_rank(query, key)
    if query.shape[2] == 0 or key.shape[2] == 0:
        raise InputError("query and key need at least one token each")
    h, hkv = query.shape[1], key.shape[1]
    if h % hkv:
        raise InputError(f"{h} query heads cannot share {hkv} key heads evenly")


def edge_lists(distance_edges: Sequence[int] | None, local_window: int) -> tuple[list[int], list[int]]:
    """``(edges, all_edges)``: the requested distance edges, sorted without repeats, and those plus ``local_window``."""
    edges = sorted(set(int(e) for e in (distance_edges or ())))
    return edges, sorted(set(edges) | {int(local_window)})


def as_4d(x: torch.Tensor) -> torch.Tensor:
    """``x`` with leading dimensions of size 1 added up to four (a view; 4-D and larger tensors as they are)."""
    while x.dim() < 4:
        x = x.unsqueeze(0)
    return x
