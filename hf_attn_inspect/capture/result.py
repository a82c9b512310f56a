"""The data model every view of hf-attn-inspect reads: :class:`AttentionResult`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import InputError
from ..core.files import atomic_path, write_text
from ..core.stacks import ATTENTIONS, CROSS, DECODER, SELF, check_stack, is_main
from ..core.tokens import clean_token
from .grid import PatchGrid
from .measures import MEASURES

__all__ = ["AttentionResult", "GenerationResult"]

_FORMAT_VERSION = 1
_MEASURE_PREFIX = "measure."  # safetensors key of a measure: measure.<name>
_ROW_STATS_PREFIX = "row_stats."  # safetensors key of a generation's row statistic: row_stats.<name>


@dataclass
class AttentionResult:
    """Every captured attention weight of one input, labelled with the tokenizer's tokens.

    ``attentions`` is a float32 CPU tensor ``[layers, heads, query, key]``: row ``i`` of head ``h`` in
    layer ``l`` holds how much token ``i`` attends to each token ``j``; it sums to 1 over the keys the
    model lets it see (causal models: ``j <= i``) and masked keys are exactly 0. Padding is never part
    of a result. ``layer_ids``/``head_ids`` give the model's 0-based layer and head index of each row of
    the first two dimensions (all of them unless a subset was captured). ``tokens`` are the tokenizer's
    tokens, special tokens included; ``word_ids`` map tokens to words (``None`` for special tokens) and
    ``segment_ids`` to the first (0) or second (1) text of a pair. For encoder-decoder models,
    ``attentions``/``tokens`` are the encoder's self-attention and input, and ``decoder_attentions``
    ``[layers, heads, dec, dec]`` and ``cross_attentions`` ``[layers, heads, dec, enc]`` come with
    ``decoder_tokens``. ``truncated`` is True when the input was longer than the model's maximum (or
    ``max_length``) and was cut; then ``kept_chars`` gives, for ``text`` and ``text_pair``, how many of
    their characters the kept tokens cover (``text[:kept_chars[0]]`` is what was analysed; None where the
    tokenizer has no character offsets). ``measures`` holds the other measures captured for the main stack
    (``self``/encoder), ``{name: [layers, heads, query, key]}`` (per head) or ``{name: [layers, query, key]}``
    (per layer) aligned with ``attentions``; read any of them, ``weights`` included, with :meth:`measure`. For an
    image (vision transformers), ``tokens`` are the unit labels (``[CLS]``, ``[DIST]``, ``[REG0]``...,
    ``p(row,col)``), ``grid`` the :class:`~hf_attn_inspect.capture.grid.PatchGrid` (grid shape, each patch's pixel
    box) and ``image`` the image as the model saw it (``uint8 [H, W, 3]``, after the processor's resize and crop,
    normalisation undone), which the image views draw over.
    """

    tokens: list[str]
    attentions: torch.Tensor
    layer_ids: list[int] = field(default_factory=list)
    head_ids: list[int] = field(default_factory=list)
    word_ids: list[int | None] | None = None
    segment_ids: list[int | None] | None = None
    special_tokens_mask: list[bool] | None = None
    model_name: str = ""
    text: str | None = None
    text_pair: str | None = None
    is_causal: bool = False
    decoder_tokens: list[str] | None = None
    decoder_attentions: torch.Tensor | None = None
    cross_attentions: torch.Tensor | None = None
    decoder_word_ids: list[int | None] | None = None
    decoder_special_tokens_mask: list[bool] | None = None
    truncated: bool = False
    kept_chars: list[int | None] | None = None
    measures: dict[str, torch.Tensor] = field(default_factory=dict)
    grid: PatchGrid | None = None
    image: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.attentions.dim() != 4:
            raise InputError(f"attentions must be [layers, heads, query, key], got shape {tuple(self.attentions.shape)}")
        per_layer = self.attentions.shape[:1] + self.attentions.shape[2:]
        for name, values in self.measures.items():
            if values.shape != self.attentions.shape and values.shape != per_layer:
                raise InputError(
                    f"measure '{name}' must have the shape of attentions {tuple(self.attentions.shape)} (per head) "
                    f"or {tuple(per_layer)} (per layer), got {tuple(values.shape)}"
                )
        if not self.layer_ids:
            self.layer_ids = list(range(self.attentions.shape[0]))
        if not self.head_ids:
            self.head_ids = list(range(self.attentions.shape[1]))
        if self.special_tokens_mask is None:
            self.special_tokens_mask = [False] * len(self.tokens)

    # ------------------------------------------------------------------ shape
    @property
    def num_layers(self) -> int:
        """Number of captured layers (``len(layer_ids)``)."""
        return int(self.attentions.shape[0])

    @property
    def num_heads(self) -> int:
        """Number of captured heads per layer (``len(head_ids)``)."""
        return int(self.attentions.shape[1])

    @property
    def seq_len(self) -> int:
        """Number of tokens of the (encoder) input, special tokens included, padding excluded."""
        return len(self.tokens)

    @property
    def is_encoder_decoder(self) -> bool:
        """True when the result holds decoder self-attention and cross-attention too."""
        return self.decoder_attentions is not None

    @property
    def display_tokens(self) -> list[str]:
        """``tokens`` with byte-level/SentencePiece markers turned into readable text (for plots)."""
        return [clean_token(t) for t in self.tokens]

    # ---------------------------------------------------------------- access
    def stack(self, which: str = "self") -> tuple[torch.Tensor, list[str], list[str]]:
        """``(attentions, query_tokens, key_tokens)`` for ``which`` in ``self`` (encoder), ``decoder``, ``cross``."""
        if is_main(which):
            return self.attentions, self.tokens, self.tokens
        if not self.is_encoder_decoder:
            raise InputError(f"'{which}' attention exists only for encoder-decoder models; use 'self'")
        if check_stack(which, ATTENTIONS, "attention") == DECODER:
            return self.decoder_attentions, self.decoder_tokens, self.decoder_tokens
        return self.cross_attentions, self.decoder_tokens, self.tokens

    def layer_index(self, layer: int) -> int:
        """Position in ``attentions`` of the model's layer ``layer``; a clear error lists the valid layers."""
        if layer not in self.layer_ids:
            raise InputError(f"layer {layer} is out of range; valid layers: {_describe(self.layer_ids)}")
        return self.layer_ids.index(layer)

    def head_index(self, head: int) -> int:
        """Position in ``attentions`` of the model's head ``head``; a clear error lists the valid heads."""
        if head not in self.head_ids:
            raise InputError(f"head {head} is out of range; valid heads: {_describe(self.head_ids)}")
        return self.head_ids.index(head)

    def head(self, layer: int, head: int, which: str = "self") -> torch.Tensor:
        """The ``[query, key]`` weights of the model's ``layer`` and ``head`` (model indices, 0-based)."""
        att, _, _ = self.stack(which)
        return att[self.layer_index(layer), self.head_index(head)]

    def layer(self, layer: int, which: str = "self") -> torch.Tensor:
        """The ``[heads, query, key]`` weights of the model's ``layer``."""
        att, _, _ = self.stack(which)
        return att[self.layer_index(layer)]

    def measure(self, name: str) -> torch.Tensor:
        """The map of measure ``name`` for the main stack, ``[layers, heads, query, key]`` for a per-head measure and
        ``[layers, query, key]`` for a per-layer one: ``weights`` is :attr:`attentions`, ``norm`` is
        ``||alpha_ij f_h(x_j)||`` (how far token ``j``'s value vector, mapped through head ``h``'s output projection
        and weighted by the attention, moves token ``i``; Kobayashi et al. 2020), ``alti``, ``value_zeroing``,
        ``flow``... are per layer; see :data:`~hf_attn_inspect.capture.measures.MEASURES` and
        docs/guides/measures.md. A measure that was not captured raises
        :class:`InputError` saying what to pass."""
        if name == "weights":
            return self.attentions
        if name in self.measures:
            return self.measures[name]
        if name not in MEASURES:
            raise InputError(f"unknown measure '{name}'; valid measures: {', '.join(MEASURES)}")
        captured = ", ".join(["weights", *self.measures])
        raise InputError(
            f"measure '{name}' was not captured (this result has: {captured}); pass measures=['{name}'] to the "
            "inspector"
        )

    def to_numpy(self, which: str = "self") -> np.ndarray:
        """The ``[layers, heads, query, key]`` weights as a float32 numpy array (``which`` as in :meth:`stack`)."""
        return self.stack(which)[0].detach().cpu().numpy()

    # ----------------------------------------------------------- persistence
    def _metadata(self) -> dict[str, Any]:
        skip = {"attentions", "decoder_attentions", "cross_attentions", "measures", "row_stats", "grid", "image"}
        meta = {k: v for k, v in self.__dict__.items() if k not in skip}
        if self.grid is not None:
            meta["grid"] = self.grid.to_dict()
        meta["format_version"] = _FORMAT_VERSION
        return meta

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to one ``.safetensors`` file (tensors) with its labels as JSON metadata; no pickle.

        Measures are stored under ``measure.<name>``; files written before measures existed load with none.

        The file is written to a temporary name and renamed, so an interrupted save never leaves a
        half-written file. Returns the path written.
        """
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"attentions": self.attentions.contiguous()}
        if self.decoder_attentions is not None:
            tensors["decoder_attentions"] = self.decoder_attentions.contiguous()
        if self.cross_attentions is not None:
            tensors["cross_attentions"] = self.cross_attentions.contiguous()
        for name, values in self.measures.items():
            tensors[_MEASURE_PREFIX + name] = values.contiguous()
        if self.image is not None:
            tensors["image"] = torch.from_numpy(np.ascontiguousarray(self.image))
        for name, values in getattr(self, "row_stats", {}).items():  # a GenerationResult's row statistics
            tensors[_ROW_STATS_PREFIX + name] = values.contiguous()
        metadata = {"hf_attn_inspect": json.dumps(self._metadata())}
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AttentionResult":
        """Read a result written by :meth:`save` (a saved :class:`GenerationResult`
        loads as one)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"no saved result at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["hf_attn_inspect"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (KeyError, ValueError, OSError) as exc:
            raise InputError(f"{path} is not an hf-attn-inspect result file ({exc})") from None
        meta.pop("format_version", None)
        if meta.pop("kind", None) == GenerationResult.kind:  # a saved generation loads as one
            cls = GenerationResult
        measures = {k[len(_MEASURE_PREFIX):]: tensors.pop(k) for k in list(tensors) if k.startswith(_MEASURE_PREFIX)}
        stats = {k[len(_ROW_STATS_PREFIX):]: tensors.pop(k) for k in list(tensors) if k.startswith(_ROW_STATS_PREFIX)}
        if "image" in tensors:
            tensors["image"] = tensors["image"].numpy()
        if meta.get("grid") is not None:
            meta["grid"] = PatchGrid.from_dict(meta["grid"])
        return cls(**meta, **tensors, measures=measures, **({"row_stats": stats} if stats else {}))

    # ------------------------------------------------------------- explorer
    def to_html(self, path: str | os.PathLike | None = None, **kwargs: Any) -> str:
        """The self-contained interactive explorer page as an HTML string; also written to ``path`` if given.

        See :func:`hf_attn_inspect.views.explorer.explorer_html` for the options (``classes``, ``metrics``,
        ``rollout``, ``title``).
        """
        from ..views.explorer import explorer_html

        text = explorer_html(self, **kwargs)
        if path is not None:
            write_text(text, path)
        return text

    def show(self, **kwargs: Any) -> object:
        """Show the interactive explorer inline in a notebook (see :func:`hf_attn_inspect.views.explorer.show`)."""
        from ..views.explorer import show

        return show(self, **kwargs)

    def __repr__(self) -> str:
        kind = "encoder-decoder" if self.is_encoder_decoder else ("causal" if self.is_causal else "bidirectional")
        return (
            f"AttentionResult(model={self.model_name!r}, {kind}, tokens={self.seq_len}, "
            f"layers={self.num_layers}, heads={self.num_heads})"
        )


@dataclass(repr=False)
class GenerationResult(AttentionResult):
    """Attention of every position of a generated sequence, as the model computed it while generating (KV cache on).

    The generating stack (``self`` for decoder-only models, ``decoder`` for encoder-decoder ones, see
    :attr:`stack_name`) holds prompt + generated tokens; its first ``prompt_length`` tokens are the prompt (the
    decoder start token(s) for encoder-decoder models, whose source is ``tokens``). Its ``[layers, heads, T, T]``
    weights keep rows by position: row ``i`` is what position ``i`` attended to; the prompt rows come from the
    first decoding step, every later row from the step that fed that token, the last generated token's row from
    one more cached step. What the model looked at when it wrote the generated token at position ``t`` is row
    ``t - 1`` (the query whose output predicted ``t``): :meth:`step_rows`. ``probabilities[k]`` is the model's
    probability of the ``k``-th generated token (softmax of its logits, before temperature, top-k and top-p),
    ``alternatives[k]`` the most probable tokens of that step as ``[token, probability]`` pairs;
    ``generation`` the settings (``do_sample``, ``seed``, ``temperature``, ``top_p``, ``top_k``,
    ``max_new_tokens``). A generation whose full rows do not fit the memory budget
    (:func:`~hf_attn_inspect.runs.generation.generate_within_budget`) keeps full rows for ``layer_ids`` only and
    ``row_stats`` for every layer of ``row_stats_layers``: ``{quantity: [layers, heads, T]}``, the per-row
    quantities of :data:`~hf_attn_inspect.stats.metrics.ROW_QUANTITIES` (entropy, max weight, first token...) of
    each position's row of the generating stack.
    """

    prompt_length: int = 0
    generated_text: str = ""
    probabilities: list[float] = field(default_factory=list)
    alternatives: list[list[list[Any]]] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)
    row_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    row_stats_layers: list[int] = field(default_factory=list)

    kind = "generation"  # the ``kind`` written into a saved file's metadata (AttentionResult.load dispatches on it)

    @property
    def stack_name(self) -> str:
        """The generating stack: ``decoder`` for encoder-decoder models, else ``self``."""
        return DECODER if self.is_encoder_decoder else SELF

    @property
    def sequence_tokens(self) -> list[str]:
        """Prompt + generated tokens of the generating stack."""
        return list(self.decoder_tokens if self.is_encoder_decoder else self.tokens)

    @property
    def generated_tokens(self) -> list[str]:
        """The generated tokens (tokenizer tokens)."""
        return self.sequence_tokens[self.prompt_length:]

    @property
    def num_generated(self) -> int:
        """Number of generated tokens."""
        return len(self.sequence_tokens) - self.prompt_length

    def step_rows(self, layer: int, head: int | None = None, which: str | None = None) -> torch.Tensor:
        """``[generated, keys]``: row ``k`` is what the model looked at when it wrote generated token ``k`` (the row
        of position ``prompt_length + k - 1``), for the model's ``layer`` and ``head`` (``None``: the average over
        the captured heads). ``which`` is the generating stack (default) or ``cross`` (encoder-decoder models: the
        source). Keys are every position of the sequence (later ones are 0: the model could not see them)."""
        which = which or self.stack_name
        if which not in (self.stack_name, CROSS):
            raise InputError(f"step rows exist for '{self.stack_name}' and, for encoder-decoder models, 'cross'")
        weights = self.layer(layer, which)
        weights = weights.mean(0) if head is None else weights[self.head_index(head)]
        start = self.prompt_length - 1
        return weights[start:start + self.num_generated]

    def _metadata(self) -> dict[str, Any]:
        meta = super()._metadata()
        meta["kind"] = self.kind
        return meta

    def __repr__(self) -> str:
        return (
            f"GenerationResult(model={self.model_name!r}, prompt={self.prompt_length} tokens, "
            f"generated={self.num_generated}, text={self.generated_text[:40]!r}, "
            f"layers={self.num_layers}, heads={self.num_heads})"
        )


def _describe(ids: list[int]) -> str:
    if ids and ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}..{ids[-1]}"
    return ", ".join(str(i) for i in ids)
