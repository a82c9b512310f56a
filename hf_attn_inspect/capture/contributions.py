"""Recorders of what each head carries: its value vectors, its output and its contribution to the layer's output.

An attention layer's output is ``sum_h sum_j alpha^h_ij f_h(x_j) + b_O`` with ``f_h(x_j) = (x_j W_V + b_V)_h
W_O^h``: token ``j``'s value vector in head ``h`` (value bias included, since the value is ``v_proj(x)``)
mapped through head ``h``'s columns of the output projection (:mod:`~hf_attn_inspect.capture.projections`).
Kobayashi et al. (2020, "Attention is not only a weight") measure how much token ``j`` moves token ``i`` by
``||alpha_ij f_h(x_j)|| = alpha_ij ||f_h(x_j)||``: :class:`ContributionsRecorder` keeps the norms
``||f_h(x_j)||`` (``[batch, heads, T_k]``), never a ``[heads, T_q, T_k, hidden]`` tensor.

All three recorders take the ``layers``/``heads``/``stacks``/``device`` of
:class:`~hf_attn_inspect.capture.recorders.KeepingRecorder` and keep float32 tensors keyed ``[stack][layer]``
(padding positions included). They need the query/value/output of the attention interface: on the eager
fallback (a model that does not dispatch through transformers' attention interface) they raise
:class:`~hf_attn_inspect.core.errors.CaptureError`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.errors import CaptureError
from ..core.kernels import repeat_kv
from .projections import output_projection
from .recorders import AttentionCall, KeepingRecorder

__all__ = ["ValuesRecorder", "HeadOutputsRecorder", "ContributionsRecorder", "head_values", "per_head_projection"]


def _check(call: AttentionCall, recorder: KeepingRecorder) -> None:
    if call.module is None or call.value is None or call.query is None:
        raise CaptureError(
            f"{type(recorder).__name__} needs each head's value vectors, but the model does not dispatch through "
            f"transformers' attention interface (attention '{call.site.name}' came from the eager "
            "output_attentions fallback); only attention weights can be captured from it"
        )


def head_values(call: AttentionCall) -> torch.Tensor:
    """``call``'s value vectors with one copy per query head: ``[batch, heads, T_k, head_dim]`` (grouped-query
    key/value heads repeated, as the attention itself uses them)."""
    return repeat_kv(call.value, call.query.shape[1])


def per_head_projection(model: torch.nn.Module, call: AttentionCall) -> torch.Tensor:
    """``W_O^h`` of ``call``'s attention module, ``[heads, hidden, head_dim]`` float32: head ``h``'s columns of the
    output projection (linear orientation), so ``f_h(x_j) = W_O^h v_hj``."""
    weight, _ = output_projection(model, call.module, call.site.name or None)
    heads, dim = call.query.shape[1], call.value.shape[-1]
    return weight.float().reshape(weight.shape[0], heads, dim).transpose(0, 1)


class ValuesRecorder(KeepingRecorder):
    """Keeps each head's value vectors ``values[stack][layer]``: ``[batch, heads, T_k, head_dim]`` (``v_proj(x)``
    per head, bias included; key/value heads repeated for grouped-query attention)."""

    kinds = {"values": "values"}
    values: dict[str, dict[int, torch.Tensor]]

    def record(self, call: AttentionCall) -> None:
        if self.wants(call.site):
            _check(call, self)
            self.keep("values", call.site, self.pick_heads(head_values(call)))


class HeadOutputsRecorder(KeepingRecorder):
    """Keeps each head's output before the output projection, ``outputs[stack][layer]``: ``[batch, heads, T_q,
    head_dim]`` (``sum_j alpha_ij v_j`` per head)."""

    kinds = {"head_outputs": "outputs"}
    outputs: dict[str, dict[int, torch.Tensor]]

    def record(self, call: AttentionCall) -> None:
        if self.wants(call.site):
            _check(call, self)
            self.keep("head_outputs", call.site, self.pick_heads(call.output))


class ContributionsRecorder(KeepingRecorder):
    """Keeps each head's contribution through the output projection.

    ``contributions[stack][layer]`` is ``[batch, heads, T_q, hidden]``: head ``h``'s share of the layer's output,
    ``sum_j alpha_ij f_h(x_j) = o_h W_O^h`` (summed over heads plus the projection's bias it is the layer's
    output); ``norms[stack][layer]`` is ``[batch, heads, T_k]``: ``||f_h(x_j)||`` with ``f_h(x_j) = (x_j W_V +
    b_V)_h W_O^h`` (value bias included, output bias not). ``sums=False`` keeps only the norms (what the
    ``norm`` measure needs). ``model`` is the model whose attention modules' output projections are looked up.
    """

    kinds = {"contributions": "contributions", "norms": "norms"}
    contributions: dict[str, dict[int, torch.Tensor]]
    norms: dict[str, dict[int, torch.Tensor]]

    def __init__(
        self,
        model: torch.nn.Module,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        *,
        stacks: Sequence[str] | None = None,
        device: str | torch.device | None = "cpu",
        sums: bool = True,
    ) -> None:
        super().__init__(layers, heads, stacks=stacks, device=device)
        self.model = model
        self.sums = sums

    def record(self, call: AttentionCall) -> None:
        if not self.wants(call.site):
            return
        _check(call, self)
        with torch.no_grad():
            per_head = per_head_projection(self.model, call)  # [heads, hidden, d]
            if self.heads is not None:
                per_head = per_head[self.heads]
            values = self.pick_heads(head_values(call)).float()
            self.keep("norms", call.site, torch.einsum("bhkd,hod->bhko", values, per_head).norm(dim=-1))
            if self.sums:
                output = self.pick_heads(call.output).float()
                self.keep("contributions", call.site, torch.einsum("bhqd,hod->bhqo", output, per_head))
