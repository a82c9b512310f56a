"""Norm-based shares per head over a dataset (``batch --measures weights,norm``).

:class:`NormSharesRecorder` is :class:`~hf_attn_inspect.runs.dataset.SentenceStatsRecorder` plus four
per-sentence values per head: the share of each query row's ``norm`` measure (``alpha_ij ||f_h(x_j)||``,
Kobayashi et al. 2020; rows normalised to 1) that goes to the first token, to the tokenizer's other special
tokens, to punctuation and to the other tokens, averaged over the sentence's real query rows. Over a dataset
they become ``norm_first_mean`` ... ``norm_other_std`` columns of ``head_stats.csv``, beside the weights'
``first_token_mean`` and ``special_tokens_mean``, so Kobayashi's finding ([CLS]/[SEP]/punctuation get large
weights but small norms) can be measured on any dataset.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..capture.contributions import head_values, per_head_projection
from ..capture.recorders import AttentionCall
from ..core.kernels import scaled_dot_product_attention_with_weights
from ..core.stacks import MAIN_STACKS
from ..stats.metrics import HEAD_METRICS
from .dataset import SentenceStatsRecorder

__all__ = ["NORM_SHARES", "NormSharesRecorder", "norm_shares_factory"]

#: The per-head values :class:`NormSharesRecorder` adds to the dataset statistics.
NORM_SHARES = ("norm_first", "norm_special", "norm_punctuation", "norm_other")


class NormSharesRecorder(SentenceStatsRecorder):
    """The dataset statistics of every head plus its norm-based shares (:data:`NORM_SHARES`; module docstring).

    ``model`` is the model that runs (its output projections give ``||f_h(x_j)||``); the other arguments are
    :class:`SentenceStatsRecorder`'s. The weights are always computed with the reference kernel (the fused
    CUDA kernel keeps no weights to weigh the norms with).
    """

    metric_names = HEAD_METRICS + NORM_SHARES

    def __init__(self, valid: torch.Tensor, special: torch.Tensor | None = None,
                 punctuation: torch.Tensor | None = None, *, model: torch.nn.Module, sparsity_threshold: float = 0.3,
                 stacks: Sequence[str] = MAIN_STACKS) -> None:
        super().__init__(valid, special, punctuation, sparsity_threshold=sparsity_threshold, stacks=stacks)
        self.metric_names = HEAD_METRICS + NORM_SHARES
        self.model = model

    def compute(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        if call.site.stack not in self.stacks:
            return super().compute(call)
        output, weights = scaled_dot_product_attention_with_weights(
            call.query, call.key, call.value, call.mask, scale=call.scaling, softcap=call.softcap
        )
        self.metric_names = HEAD_METRICS  # _reduce keeps the weights' statistics first
        self._reduce(call.site, weights, call.causal)
        self.metric_names = HEAD_METRICS + NORM_SHARES
        shares = self._shares(call, weights.float())
        self.values[call.site.layer] = torch.cat([self.values[call.site.layer], shares.to(self.values[call.site.layer])], -1)
        return output, None

    def _shares(self, call: AttentionCall, weights: torch.Tensor) -> torch.Tensor:
        """``[batch, heads, 4]``: the norm measure's mean row share of each token group."""
        dev = weights.device
        norms = torch.einsum("bhkd,hod->bhko", head_values(call).float(), per_head_projection(self.model, call)).norm(dim=-1)
        m = weights * norms[:, :, None, :]
        m = m / m.sum(-1, keepdim=True).clamp_min(1e-12)
        valid = self.valid.to(dev)
        t = valid.shape[1]
        first = torch.zeros_like(valid)
        first[:, 0] = True
        special = (self.special.to(dev) if self.special is not None else torch.zeros_like(valid)) & ~first
        punct = (self.punctuation.to(dev) if self.punctuation is not None else torch.zeros_like(valid)) & ~first & ~special
        other = valid & ~first & ~special & ~punct
        groups = torch.stack([first & valid, special & valid, punct & valid, other], -1).float()  # [B, T, 4]
        per_row = torch.einsum("bhqk,bkg->bhqg", m, groups)  # [B, H, T, 4]
        rows = valid.float()[:, None, :t, None]
        return (per_row * rows).sum(2) / rows.sum(2).clamp_min(1.0)


class norm_shares_factory:  # noqa: N801 - a factory named like the recorder it builds
    """The ``probe=`` of :func:`~hf_attn_inspect.runs.dataset.analyze_dataset` for ``--measures weights,norm``:
    builds a :class:`NormSharesRecorder` on ``model`` for each batch."""

    metric_names = HEAD_METRICS + NORM_SHARES
    __qualname__ = "NormSharesRecorder"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, **kwargs) -> NormSharesRecorder:
        return NormSharesRecorder(model=self.model, **kwargs)
