"""Per-layer context mixing from the attention block's decomposition: norms with the residual and LayerNorm, ALTI.

An attention block's output for token ``i`` decomposes into one vector per input token ``j`` (Kobayashi et al.
2021; Ferrando et al. 2022): ``z_ij = sum_h alpha^h_ij f_h(x_j) + [i = j] x_i``, the attention's share of ``j``
plus the residual on the diagonal, so that ``y_i = sum_j z_ij + b_O`` is the real input of the norm after
attention (post-LN) or the residual stream after attention (pre-LN). :func:`decompose` computes them for a block
of tokens; :class:`MixingRecorder` turns them into ``[batch, 1, T_q, T_k]`` maps per layer (never a ``[T, T,
hidden]`` tensor for the whole input: the norms come from per-token Gram matrices of the heads' vectors, ALTI's
L1 distances from query rows in chunks):

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
from .contributions import head_values, per_head_projection
from .layout import POST, Layout, block_layouts
from .projections import output_projection
from .recorders import AttentionCall, KeepingRecorder

__all__ = ["MIXING_MAPS", "LayoutRecorder", "MixingRecorder", "decompose", "alti", "hooked_inputs"]

#: The maps :class:`MixingRecorder` can keep.
MIXING_MAPS = ("norm_layer", "norm_res", "norm_res_ln", "alti")

#: Float32 elements of one chunk of ALTI's transformed vectors ``[T_k, rows, hidden]`` (2 MiB: it stays in cache).
_CHUNK = 1 << 19


def _norms(alpha: torch.Tensor, f: torch.Tensor, x: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
    """``||sum_h alpha^h_ij f_hj + [i = j] x_i|| / scale_i`` ``[B, T_q, T_k]`` without the ``[T, T, hidden]`` vectors:
    from the Gram matrices ``f_hj . f_gj`` (``x`` None: no residual term)."""
    gram = torch.einsum("bhko,bgko->bkhg", f, f)  # [B, T_k, H, H]
    sq = torch.einsum("bhqk,bkhg,bgqk->bqk", alpha, gram, alpha)
    if x is not None:
        n = min(alpha.shape[2], alpha.shape[3])
        idx = torch.arange(n)
        cross = torch.einsum("bhko,bko->bhk", f[:, :, :n], x[:, :n])  # f_hi . x_i
        diag = alpha[:, :, idx, idx]  # [B, H, n]
        sq[:, idx, idx] += 2 * (diag * cross).sum(1) + x[:, :n].pow(2).sum(-1)
    return sq.clamp_min(0).sqrt() / scale[:, :, None]


def decompose(layout: Layout, x: torch.Tensor, alpha: torch.Tensor, f: torch.Tensor, bias: torch.Tensor | None,
              attended: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One attention block's decomposition, per token: ``(f', x', scale [B, T_q], output [B, T_q, hidden])``.

    ``x [B, T, hidden]`` is the residual stream entering the block, ``alpha [B, H, T_q, T_k]`` the weights, ``f [B,
    H, T_k, hidden]`` each head's transformed values ``f_h(x_j)``, ``bias`` the output projection's bias. ALTI's
    transformed vector of ``j`` for ``i`` is ``T_i(x_j) = (sum_h alpha^h_ij f'_hj + [i = j] x'_i) / scale_i``:
    pre-LN ``f' = f``, ``x' = x``, ``scale = 1`` (the summands of the residual stream after attention); post-LN
    the LayerNorm applied to each summand: ``f' = gamma * (f - mean f)``, ``x' = gamma * (x - mean x)`` and
    ``scale`` the standard deviation of the real LayerNorm input ``y_i = x_i + sum_h (alpha^h f_h)_i + b_O``.
    ``output`` is what they decompose (``sum_j T_i(x_j)`` plus the bias terms): post-LN the block's LayerNorm
    output, pre-LN ``y``. ``attended`` is ``sum_h (alpha^h f_h)_i`` ``[B, T_q, hidden]`` when the caller has it
    (the heads' outputs through the output projection; None: computed from ``alpha`` and ``f``).
    """
    y = x + (torch.einsum("bhqk,bhko->bqo", alpha, f) if attended is None else attended)
    if bias is not None:
        y = y + bias
    if layout.kind != POST:
        return f, x, torch.ones(y.shape[:2], device=y.device), y
    norm = layout.norm
    gamma = norm.weight.float() if norm.weight is not None else torch.ones(y.shape[-1], device=y.device)
    scale = (y.var(-1, unbiased=False) + norm.eps).sqrt()
    f_ln = gamma * (f - f.mean(-1, keepdim=True))
    x_ln = gamma * (x - x.mean(-1, keepdim=True))
    return f_ln, x_ln, scale, norm(y.to(norm.weight.dtype)).float()


@torch.no_grad()
def alti(alpha: torch.Tensor, f: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """ALTI's contributions ``[B, T_q, T_k]`` (rows sum to 1) from :func:`decompose`'s ``f', x', scale, output``:
    ``max(0, ||o_i||_1 - ||o_i - T_i(x_j)||_1)`` normalised per row, query rows in chunks (no ``[T, T, hidden]``
    tensor for the whole input).

    Per chunk of query rows, one batched matrix product over the key tokens gives ``sum_h alpha^h_ij f'_hj /
    scale_i - o_i`` for every key ``j`` (``[T_k, rows, hidden]``, written into one reused buffer) and its L1
    norm; the diagonal, where the residual ``x'_i`` adds to the vector, is recomputed apart (``[T, hidden]``).
    Computed without gradients (a measurement, also in a run with ``grad=True``)."""
    b, _, t_q, t_k = alpha.shape
    hidden = f.shape[-1]
    alpha, output = alpha.to(f.dtype) / scale[:, None, :, None], output.to(f.dtype)  # LayerNorm's division folded in
    by_key = alpha.permute(0, 3, 2, 1).contiguous()  # [B, T_k, T_q, H]
    f_key = f.transpose(1, 2).contiguous()  # [B, T_k, H, hidden]
    step = max(1, min(t_q, _CHUNK // max(1, t_k * hidden)))
    buffer = f.new_empty(t_k * step * hidden)
    dist = f.new_empty(b, t_k, t_q)  # ||sum_h alpha'_hij f'_hj - o_i||_1, keys first
    for batch in range(b):
        for start in range(0, t_q, step):
            stop = min(t_q, start + step)
            vec = buffer[: t_k * (stop - start) * hidden].view(t_k, stop - start, hidden)
            rows = output[batch, None, start:stop].expand(t_k, -1, -1)
            torch.baddbmm(rows, by_key[batch, :, start:stop], f_key[batch], beta=-1, out=vec)
            dist[batch, :, start:stop] = vec.abs_().sum(-1)
    dist = dist.transpose(1, 2).contiguous()
    n = min(t_q, t_k)
    idx = torch.arange(n, device=alpha.device)
    diagonal = torch.diagonal(alpha[:, :, :n, :n], 0, 2, 3)  # [B, H, n]: alpha'_hii
    own = (diagonal[..., None] * f[:, :, :n]).sum(1) + x[:, :n] / scale[:, :n, None]
    dist[:, idx, idx] = (own - output[:, :n]).abs().sum(-1)
    out = (output.abs().sum(-1)[:, :, None] - dist).clamp_min(0)
    return out / out.sum(-1, keepdim=True).clamp_min(1e-12)


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


class LayoutRecorder(KeepingRecorder):
    """A recorder of all heads that reads, besides each attention call, the inputs of one module of its layer's
    :class:`~hf_attn_inspect.capture.layout.Layout` (``hooked``: ``"source"`` for the residual stream,
    ``"block"`` for the whole layer), by forward pre-hooks installed while the run lasts (:meth:`attach`).
    ``model`` is the model that runs."""

    hooked = "source"

    def __init__(
        self,
        model: torch.nn.Module,
        layers: Sequence[int] | None = None,
        *,
        stacks: Sequence[str] | None = None,
        device: str | torch.device | None = "cpu",
    ) -> None:
        super().__init__(layers, None, stacks=stacks, device=device)
        self.model = model
        self.layouts = block_layouts(model)
        self._inputs: dict[int, tuple] = {}

    def attach(self):
        return hooked_inputs([getattr(layout, self.hooked) for layout in self.layouts.values()], self._inputs)

    def inputs(self, call: AttentionCall) -> tuple[Layout, tuple]:
        """``call``'s layout and the ``(args, kwargs)`` its hooked module was called with in this run."""
        layout = self.layouts.get(id(call.module))
        module = None if layout is None else getattr(layout, self.hooked)
        if module is None or id(module) not in self._inputs:
            raise CaptureError(f"cannot find the {self.hooked} inputs of attention module '{call.site.name}'")
        return layout, self._inputs.pop(id(module))


class MixingRecorder(LayoutRecorder):
    """Keeps the per-layer mixing maps ``maps`` (of :data:`MIXING_MAPS`) of every kept layer, each ``[batch, 1,
    T_q, T_k]`` float32 (see the module docstring); all heads always enter (the maps are per layer).

    ``model`` is the model that runs (its layouts, :mod:`~hf_attn_inspect.capture.layout`, and output
    projections are looked up); the residual stream is read by a forward pre-hook on each layer's source module
    while the run lasts (:meth:`attach`).
    """

    needs_weights = True
    kinds = {name: "_" + name for name in MIXING_MAPS}

    def __init__(self, model: torch.nn.Module, maps: Sequence[str] = MIXING_MAPS, layers: Sequence[int] | None = None,
                 **where: object) -> None:
        super().__init__(model, layers, **where)  # stacks=, device= as in LayoutRecorder
        self.maps = tuple(maps)

    def record(self, call: AttentionCall) -> None:
        if not self.wants(call.site):
            return
        layout, (args, kwargs) = self.inputs(call)
        x = first_input(args, kwargs).float()
        _, bias = output_projection(self.model, call.module, call.site.name or None)
        alpha = call.weights.float()
        projection = per_head_projection(self.model, call)  # [H, hidden, head_dim]
        f = torch.einsum("bhkd,hod->bhko", head_values(call).float(), projection)
        bias = None if bias is None else bias.float()
        out = {}
        if "norm_layer" in self.maps:
            out["norm_layer"] = _norms(alpha, f, None, alpha.new_ones(alpha.shape[0], alpha.shape[2]))
        if "norm_res" in self.maps:
            out["norm_res"] = _norms(alpha, f, x, alpha.new_ones(alpha.shape[0], alpha.shape[2]))
        if "norm_res_ln" in self.maps or "alti" in self.maps:
            attended = torch.einsum("bhqd,hod->bqo", call.output.float(), projection)  # sum_h o_h W_O^h
            f_t, x_t, scale, output = decompose(layout, x, alpha, f, bias, attended)
            if "norm_res_ln" in self.maps:
                out["norm_res_ln"] = _norms(alpha, f_t, x_t, scale)
            if "alti" in self.maps:
                out["alti"] = alti(alpha, f_t, x_t, scale, output)
        for name, values in out.items():
            self.keep(name, call.site, values[:, None])
