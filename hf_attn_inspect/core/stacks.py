"""The attention stacks of a model, named once: ``self``, ``encoder``, ``decoder`` and ``cross``.

An encoder-only or decoder-only model has one stack, ``self``. An encoder-decoder model has three: ``encoder``
self-attention over the input, ``decoder`` self-attention over the decoder input, and ``cross`` attention from
the decoder's tokens (queries) to the encoder's (keys). Users name the input's stack ``self`` for every model
(an :class:`~hf_attn_inspect.capture.result.AttentionResult`'s ``which``, ``--attention``), which
:func:`model_stack` turns into ``encoder`` for an encoder-decoder model. Every layer reads these names and
rules from here instead of spelling the strings out.
"""

from __future__ import annotations

from typing import Collection, Iterable, Sequence

from .errors import InputError

__all__ = [
    "ATTENTIONS", "CROSS", "DECODER", "ENCODER", "MAIN_STACKS", "OUTPUT_FIELDS", "SELF", "SELF_STACKS", "STACKS",
    "check_stack", "is_main", "is_self_attention", "key_stack", "main_stack", "main_stack_of", "model_stack",
    "model_stacks", "query_stack", "result_stack", "self_attention_stacks", "stack_aliases",
]

SELF = "self"
ENCODER = "encoder"
DECODER = "decoder"
CROSS = "cross"

#: The attention stacks a model can have: ``self`` (encoder-only or decoder-only models), ``encoder``,
#: ``decoder`` and ``cross`` (encoder-decoder models), in execution order.
STACKS = (SELF, ENCODER, DECODER, CROSS)
#: The stacks whose tokens are the model's input (its main stack is one of them).
MAIN_STACKS = (SELF, ENCODER)
#: The self-attention stacks (square: queries and keys are the same tokens).
SELF_STACKS = (SELF, ENCODER, DECODER)
#: The attention a user picks in a result or with ``--attention``: ``self`` (the input's), ``decoder``, ``cross``.
ATTENTIONS = (SELF, DECODER, CROSS)
#: The field of a transformers model output holding each stack's weights under ``output_attentions=True``.
OUTPUT_FIELDS = {SELF: "attentions", ENCODER: "encoder_attentions", DECODER: "decoder_attentions",
                 CROSS: "cross_attentions"}


def model_stacks(encoder_decoder: bool) -> tuple[str, ...]:
    """The stacks a model has: ``encoder``, ``decoder`` and ``cross`` for an encoder-decoder model, else ``self``."""
    return (ENCODER, DECODER, CROSS) if encoder_decoder else (SELF,)


def main_stack(encoder_decoder: bool) -> str:
    """The stack over a model's input: ``encoder`` for an encoder-decoder model, ``self`` otherwise."""
    return ENCODER if encoder_decoder else SELF


def main_stack_of(stacks: Collection[str]) -> str:
    """The main stack among ``stacks`` (a model's ``dims()`` or recorded stacks): ``encoder`` when present, else ``self``."""
    return ENCODER if ENCODER in stacks else SELF


def is_main(stack: str) -> bool:
    """True for the stacks over the model's input (``self``, ``encoder``)."""
    return stack in MAIN_STACKS


def is_self_attention(stack: str) -> bool:
    """True unless ``stack`` is ``cross``: its queries and keys are the same tokens."""
    return stack != CROSS


def query_stack(stack: str) -> str:
    """The stack whose tokens are ``stack``'s queries: ``decoder`` for ``cross``, else ``stack`` itself."""
    return DECODER if stack == CROSS else stack


def key_stack(stack: str) -> str:
    """The stack whose tokens are ``stack``'s keys: ``encoder`` for ``cross``, else ``stack`` itself (also the
    self-attention stack whose metrics stand for ``cross``, which has none of its own)."""
    return ENCODER if stack == CROSS else stack


def model_stack(which: str, encoder_decoder: bool) -> str:
    """The model's name of a user's stack: the user-facing ``self`` is ``encoder`` in an encoder-decoder model."""
    return main_stack(encoder_decoder) if which == SELF else which


def result_stack(stack: str) -> str:
    """The user-facing name of a model's stack (as an ``AttentionResult``'s ``which``): ``encoder`` is ``self``."""
    return SELF if stack == ENCODER else stack


def stack_aliases(which: str) -> tuple[str, ...]:
    """The model stacks a user's ``which`` covers in a table with a ``stack`` column: ``self`` covers ``encoder``."""
    return MAIN_STACKS if which == SELF else (which,)


def check_stack(value: str, choices: Sequence[str] = STACKS, what: str = "stack") -> str:
    """``value`` when it is one of ``choices``, else an :class:`InputError` naming them (``what``: the word for it)."""
    if value not in choices:
        raise InputError(f"unknown {what} '{value}'; choose one of {', '.join(choices)}")
    return value


def self_attention_stacks(stacks: Iterable[str]) -> list[str]:
    """``stacks`` without ``cross``, in their order."""
    return [s for s in stacks if is_self_attention(s)]
