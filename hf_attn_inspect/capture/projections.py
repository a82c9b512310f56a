"""The output projection of an attention module, found per architecture.

Every attention layer concatenates its heads' outputs (``[..., heads * head_dim]``, head ``h`` in columns
``h * head_dim .. (h + 1) * head_dim``) and maps them back to the hidden size with one linear layer, its
*output projection* ``W_O``. Where that layer lives depends on the architecture:

- on the attention module itself: ``o_proj`` (Llama, Mistral, Qwen2, Gemma, ViT/DeiT in transformers 5),
  ``out_proj`` (BART self and cross attention), ``out_lin`` (DistilBERT), ``c_proj`` (GPT-2, a ``Conv1D``
  whose weight is stored ``[in, out]``), ``o`` (T5 ``SelfAttention`` and ``EncDecAttention``);
- on its parent's ``output.dense`` (BERT, RoBERTa, MiniLM: ``...attention.self`` -> ``...attention.output.dense``;
  older ViT/DeiT: ``...attention.attention`` -> ``...attention.output.dense``).

:func:`output_projection` returns the weight in the orientation of ``torch.nn.Linear`` (``[hidden, heads *
head_dim]``, so ``y = x W^T + b``) and the bias; the module found is cached per attention module.
"""

from __future__ import annotations

import weakref

import torch

from ..core.errors import CaptureError

__all__ = ["output_projection", "projection_module", "OWN_NAMES"]

#: Attribute names of an attention module's own output projection, tried in this order.
OWN_NAMES = ("o_proj", "out_proj", "out_lin", "c_proj", "o", "dense")

_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module]" = weakref.WeakKeyDictionary()


def _is_projection(module: object) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(module, torch.nn.Module) and isinstance(weight, torch.Tensor) and weight.dim() == 2


def _is_conv1d(module: torch.nn.Module) -> bool:
    """GPT-2's ``Conv1D``: a linear layer whose weight is stored ``[in, out]``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _name_of(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next((n for n, m in model.named_modules() if m is module), "")


def projection_module(model: torch.nn.Module, module: torch.nn.Module, name: str | None = None) -> torch.nn.Module:
    """The layer of ``model`` that projects attention module ``module``'s concatenated heads back to the hidden
    size. ``name`` is ``module``'s qualified name in ``model.named_modules()`` (looked up when None); it is needed
    when the projection is a sibling (``...attention.output.dense``). Raises :class:`CaptureError` naming the
    module when the architecture has none of the known layouts."""
    found = _CACHE.get(module)
    if found is not None:
        return found
    found = next((p for p in (getattr(module, n, None) for n in OWN_NAMES) if _is_projection(p)), None)
    if found is None:
        name = _name_of(model, module) if name is None else name
        parent_name = name.rpartition(".")[0]
        try:
            parent = model.get_submodule(parent_name) if name else None
        except AttributeError:
            parent = None
        dense = getattr(getattr(parent, "output", None), "dense", None)
        found = dense if _is_projection(dense) else None
    if found is None:
        name = _name_of(model, module) if name is None else name
        raise CaptureError(
            f"cannot find the output projection of attention module '{name}' ({type(module).__name__})"
        )
    _CACHE[module] = found
    return found


def output_projection(
    model: torch.nn.Module, module: torch.nn.Module, name: str | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight [hidden, heads * head_dim], bias [hidden] or None)`` of attention module ``module``'s output
    projection, in ``torch.nn.Linear`` orientation: the layer's output is ``concat_h(o_h) @ weight.T + bias``, and
    head ``h``'s share is ``o_h @ weight[:, h*d:(h+1)*d].T``. GPT-2's ``Conv1D`` weight is transposed. ``name`` is
    ``module``'s qualified name (see :func:`projection_module`)."""
    proj = projection_module(model, module, name)
    weight = proj.weight.t() if _is_conv1d(proj) else proj.weight
    bias = getattr(proj, "bias", None)
    return weight, bias if isinstance(bias, torch.Tensor) else None
