"""Where each attention layer's residual stream and LayerNorm are, found per architecture.

The measures that go beyond the attention weights (``norm_res``, ``norm_res_ln``, ``alti``, ``value_zeroing``)
need more of the layer than the attention call: the residual stream the attention output is added to, the
LayerNorm around it, and the whole block to re-run. Two layouts are known:

- **post-LN** (BERT, RoBERTa, MiniLM: a ``...layer.N`` block with ``attention.self`` and
  ``attention.output.LayerNorm``): the residual is the attention module's own input ``x``, and the attention
  block's output is ``LayerNorm(x + Attn(x))``;
- **pre-LN** (GPT-2: ``ln_1``/``attn``/``ln_2``; Llama, Mistral, Qwen2: ``input_layernorm``/``self_attn``/
  ``post_attention_layernorm``, RMSNorm): the residual is the input ``x`` of the norm before attention, the
  attention reads ``norm(x)``, and the attention block's output is ``x + Attn(norm(x))`` (no norm after it).

Other layouts (Gemma's sandwich norms, DeBERTa, BART, T5, DistilBERT) are not known: a measure that needs the
layout raises :class:`~hf_attn_inspect.core.errors.InputError` for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import InputError

__all__ = ["Layout", "block_layouts", "check_layout"]

POST, PRE = "post", "pre"


@dataclass(frozen=True)
class Layout:
    """One attention layer's surroundings: ``block`` (the transformer layer module), ``attention`` (the module
    whose calls reach the probe), ``source`` (the module whose first input is the residual stream ``x``: the
    attention module itself for post-LN, the norm before attention for pre-LN), ``norm`` (post-LN: the LayerNorm
    after the residual addition; pre-LN: the norm before attention) and ``kind`` (``"post"`` or ``"pre"``)."""

    block: torch.nn.Module
    attention: torch.nn.Module
    source: torch.nn.Module
    norm: torch.nn.Module
    kind: str

    @property
    def rms(self) -> bool:
        """True when the norm is an RMSNorm (no centring, no bias)."""
        return not isinstance(self.norm, torch.nn.LayerNorm)


def _child(module: torch.nn.Module | None, name: str) -> torch.nn.Module | None:
    """``module``'s submodule ``name`` or None (read from the registered children: no ``__getattr__`` miss)."""
    return None if module is None else module._modules.get(name)


def _layout(module: torch.nn.Module) -> Layout | None:
    attention = _child(module, "attention")
    inner = _child(attention, "self")
    norm = _child(_child(attention, "output"), "LayerNorm")
    if inner is not None and isinstance(norm, torch.nn.LayerNorm):
        return Layout(module, inner, inner, norm, POST)
    if _child(module, "pre_feedforward_layernorm") is not None:  # Gemma: a norm on the attention output itself
        return None
    for before, attn, after in (("ln_1", "attn", "ln_2"), ("input_layernorm", "self_attn", "post_attention_layernorm")):
        parts = [_child(module, name) for name in (before, attn, after)]
        if all(p is not None for p in parts):
            return Layout(module, parts[1], parts[0], parts[0], PRE)
    return None


def block_layouts(model: torch.nn.Module) -> dict[int, Layout]:
    """``{id(attention module): Layout}`` of every attention layer of ``model`` with a known layout."""
    found = (_layout(m) for m in model.modules())
    return {id(layout.attention): layout for layout in found if layout is not None}


def check_layout(model: torch.nn.Module, measure: str, kinds: tuple[str, ...] = (POST, PRE)) -> dict[int, Layout]:
    """:func:`block_layouts` of ``model``; raises :class:`InputError` naming ``measure`` when the model has none of
    the layouts in ``kinds`` (e.g. ``norm_res_ln`` needs the LayerNorm after the residual: post-LN only)."""
    layouts = block_layouts(model)
    if not layouts or any(layout.kind not in kinds for layout in layouts.values()):
        what = {(POST,): "post-LN models (BERT-style: a LayerNorm after the residual addition)",
                (POST, PRE): "BERT-style post-LN, GPT-2-style and Llama-style pre-LN models"}[tuple(kinds)]
        raise InputError(f"measure '{measure}' applies to {what}, not to {type(model).__name__}")
    return layouts
