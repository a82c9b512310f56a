"""Per-layer context mixing from the attention block's decomposition: norms with the residual and LayerNorm, ALTI.

An attention block's output for token ``i`` decomposes into one vector per input token ``j`` (Kobayashi et al.
2021; Ferrando et al. 2022): ``z_ij = sum_h alpha^h_ij f_h(x_j) + [i = j] x_i``, the attention's share of ``j``
plus the residual on the diagonal, so that ``y_i = sum_j z_ij + b_O`` is the real input of the norm after
attention (post-LN) or the residual stream after attention (pre-LN). :func:`decompose` computes them for a block
of query rows; :class:`MixingRecorder` turns them into ``[batch, 1, T_q, T_k]`` maps per layer (never a
``[T, T, hidden]`` tensor for the whole input: query rows go in chunks):

- ``norm_layer``: ``||sum_h alpha_ij f_h(x_j)||`` (Kobayashi et al. 2020, the whole layer);
- ``norm_res``: ``||z_ij||`` (the residual added on the diagonal);
- ``norm_res_ln`` (post-LN only): ``||LN_j(z_ij)||`` where the LayerNorm is applied to each summand as in
  Kobayashi et al. (2021)'s code: centred, scaled by ``gamma``, divided by the standard deviation of the real
  input ``y_i``; ``beta`` and the output bias dropped;
- ``alti`` (Ferrando et al. 2022): with the transformed vectors ``T_i(x_j)`` (post-LN: ``LN_j(z_ij)``; pre-LN:
  ``z_ij``) and the real output ``o_i`` (post-LN: ``LN(y_i)``; pre-LN: ``y_i``), ``max(0, ||o_i||_1 - ||o_i -
  T_i(x_j)||_1)``, rows normalised to sum to 1.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from ..core.errors import CaptureError
from .contributions import head_values
from .layout import POST, Layout, block_layouts
from .projections import output_projection
from .recorders import AttentionCall, KeepingRecorder

__all__ = ["MIXING_MAPS", "MixingRecorder", "decompose", "hooked_inputs"]

#: The maps :class:`MixingRecorder` can keep.
MIXING_MAPS = ("norm_layer", "norm_res", "norm_res_ln", "alti")

#: Float32 elements of one chunk of transformed vectors ``[batch, rows, T_k, hidden]``.
_CHUNK = 1 << 22


def decompose(
    layout: Layout,
    x: torch.Tensor,
    alpha: torch.Tensor,
    f: torch.Tensor,
    bias: torch.Tensor | None,
    rows: slice,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decomposition of query ``rows`` of one attention block: ``(attn [B, r, T_k, hidden], z, transformed,
    output)``.

    ``x [B, T, hidden]`` is the residual stream entering the block, ``alpha [B, H, T_q, T_k]`` the weights, ``f [B,
    H, T_k, hidden]`` each head's transformed values ``f_h(x_j)``, ``bias`` the output projection's bias. ``attn`` is
    ``sum_h alpha_ij f_h(x_j)``, ``z`` adds ``x_i`` on the diagonal, ``transformed`` are ALTI's ``T_i(x_j)``
    (``z`` itself for pre-LN, the LayerNorm applied to each summand for post-LN) and ``output [B, r, hidden]`` the
    real output they decompose (``sum_j transformed + bias terms``; post-LN: the block's LayerNorm output).
    """
    attn = torch.einsum("bhqk,bhko->bqko", alpha[:, :, rows], f)
    z = attn.clone()
    idx = torch.arange(rows.start, rows.stop)
    z[:, idx - rows.start, idx] += x[:, rows]
    y = z.sum(2) if bias is None else z.sum(2) + bias
    if layout.kind != POST:
        return attn, z, z, y
    norm = layout.norm
    std = (y.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()  # [B, r, 1]
    gamma = norm.weight.float() if norm.weight is not None else 1.0
    transformed = gamma * (z - z.mean(-1, keepdim=True)) / std[:, :, None]
    return attn, z, transformed, norm(y.to(norm.weight.dtype)).float()


@contextmanager
def hooked_inputs(modules: Sequence[torch.nn.Module], store: dict[int, tuple]) -> Iterator[None]:
    """Within the block, every forward of one of ``modules`` stores ``(args, kwargs)`` in ``store[id(module)]``."""
    def hook(module, args, kwargs):
        store[id(module)] = (args, kwargs)

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a module was called with (its first positional argument or ``hidden_states``)."""
    return args[0] if args else kwargs["hidden_states"]


class MixingRecorder(KeepingRecorder):
    """Keeps the per-layer mixing maps ``maps`` (of :data:`MIXING_MAPS`) of every kept layer, each ``[batch, 1,
    T_q, T_k]`` float32 (see the module docstring); all heads always enter (the maps are per layer).

    ``model`` is the model that runs (its layouts, :mod:`~hf_attn_inspect.capture.layout`, and output
    projections are looked up); the residual stream is read by a forward pre-hook on each layer's source module
    while the run lasts (:meth:`attach`).
    """

    needs_weights = True
    kinds = {name: "_" + name for name in MIXING_MAPS}

    def __init__(
        self,
        model: torch.nn.Module,
        maps: Sequence[str] = MIXING_MAPS,
        layers: Sequence[int] | None = None,
        *,
        stacks: Sequence[str] | None = None,
        device: str | torch.device | None = "cpu",
    ) -> None:
        super().__init__(layers, None, stacks=stacks, device=device)
        self.model = model
        self.maps = tuple(maps)
        self.layouts = block_layouts(model)
        self._inputs: dict[int, tuple] = {}

    def attach(self):
        return hooked_inputs([layout.source for layout in self.layouts.values()], self._inputs)

    def record(self, call: AttentionCall) -> None:
        if not self.wants(call.site):
            return
        layout = self.layouts.get(id(call.module))
        if layout is None or id(layout.source) not in self._inputs:
            raise CaptureError(f"cannot find the residual stream of attention module '{call.site.name}'")
        x = first_input(*self._inputs.pop(id(layout.source))).float()
        weight, bias = output_projection(self.model, call.module, call.site.name or None)
        heads, dim = call.query.shape[1], call.value.shape[-1]
        alpha = call.weights.float()
        per_head = weight.float().reshape(weight.shape[0], heads, dim).transpose(0, 1)  # [H, hidden, d]
        f = torch.einsum("bhkd,hod->bhko", head_values(call).float(), per_head)
        bias = None if bias is None else bias.float()
        b, t_q, t_k, hidden = alpha.shape[0], alpha.shape[2], alpha.shape[3], f.shape[-1]
        out = {name: torch.zeros(b, 1, t_q, t_k, device=alpha.device) for name in self.maps}
        step = max(1, _CHUNK // max(1, b * t_k * hidden))
        for start in range(0, t_q, step):
            rows = slice(start, min(t_q, start + step))
            attn, z, transformed, output = decompose(layout, x, alpha, f, bias, rows)
            if "norm_layer" in out:
                out["norm_layer"][:, 0, rows] = attn.norm(dim=-1)
            if "norm_res" in out:
                out["norm_res"][:, 0, rows] = z.norm(dim=-1)
            if "norm_res_ln" in out:
                out["norm_res_ln"][:, 0, rows] = transformed.norm(dim=-1)
            if "alti" in out:
                distance = (output[:, :, None] - transformed).abs().sum(-1)
                out["alti"][:, 0, rows] = (output.abs().sum(-1)[:, :, None] - distance).clamp_min(0)
        if "alti" in out:
            out["alti"] = out["alti"] / out["alti"].sum(-1, keepdim=True).clamp_min(1e-12)
        for name, values in out.items():
            self.keep(name, call.site, values)
