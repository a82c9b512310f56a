"""Capture while a model generates: every decoding step's attention rows placed by position.

:meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.generate` runs ``model.generate`` (KV cache on)
inside the same capture as :meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.run` (one
:class:`~hf_attn_inspect.capture.recorders.RecordingProbe`, the registered attention function, eager masks).
At the first step every layer sees the whole prompt as queries; at each later step one query row (the token
fed) against the keys so far. :class:`GenerationRecorder` keeps those rows in order and assembles them into
the ``[batch, heads, T, T]`` matrix of each layer, rows by position. transformers never feeds the last
generated token back, so one more cached step (the model's own continuation of the cache) computes its row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..core.sampling import check_generation_values
from ..core.stacks import CROSS, DECODER, ENCODER, SELF
from .result import GenerationResult
from .measures import compute_measures
from .recorders import AttentionCall, Recorder, RecordingProbe, WeightsRecorder
from .request import CaptureRequest, CaptureResult

# ``inspector`` parameters below are capture.inspector.AttentionInspector (which imports this module, so the
# name is a forward reference only, never imported here)

__all__ = ["GenerationRecorder", "GenerationSettings", "generate_captured"]


class GenerationRecorder(WeightsRecorder):
    """Keeps the weights of every call of a generation and places each call's query rows after the rows the
    same layer already received: ``weights[stack][layer]`` is ``[batch, heads, T_q, T_k]`` after
    :meth:`finish` (``T_q`` the rows of all steps, ``T_k`` the longest key length; keys a step did not have
    yet are 0). The step tensors stay on the model's device until :meth:`finish` (one transfer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps: dict[tuple[str, int], list[torch.Tensor]] = {}

    def record(self, call: AttentionCall) -> None:
        if self.wants(call.site):
            self.steps.setdefault((call.site.stack, call.site.layer), []).append(self.pick_heads(call.weights).detach())

    def finish(self) -> None:
        for (stack, layer), parts in self.steps.items():
            b, h = parts[0].shape[:2]
            rows = sum(p.shape[2] for p in parts)
            keys = max(p.shape[3] for p in parts)
            full = torch.zeros(b, h, rows, keys, dtype=torch.float32, device=parts[0].device)
            at = 0
            for p in parts:
                full[:, :, at:at + p.shape[2], :p.shape[3]] = p
                at += p.shape[2]
            self.weights.setdefault(stack, {})[layer] = full if self.device is None else full.to(self.device)
        self.steps.clear()


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate: ``max_new_tokens``; greedy unless ``do_sample`` (then ``seed`` makes it reproducible,
    ``temperature``/``top_p``/``top_k`` shape the sampling distribution; None: the model's defaults);
    ``alternatives`` is how many most probable tokens each step keeps."""

    max_new_tokens: int = 20
    do_sample: bool = False
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    alternatives: int = 5

    def check(self) -> None:
        """Raise :class:`InputError` for values ``generate`` cannot use."""
        check_generation_values(self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.alternatives)

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``model.generate`` these settings give."""
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kw.update({k: v for k, v in (("temperature", self.temperature), ("top_p", self.top_p),
                                         ("top_k", self.top_k)) if v is not None})
        return kw

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (stored with the result)."""
        return {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample, "seed": self.seed,
                "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


def generate_captured(
    inspector: "AttentionInspector",
    inputs: dict[str, torch.Tensor],
    request: CaptureRequest,
    settings: GenerationSettings,
    texts: Sequence[str] | None,
    pad_id: int | None,
    extra: dict[str, Any] | None = None,
    recorders: Sequence[Recorder] = (),
) -> list[GenerationResult]:
    """Generate from the encoded prompts ``inputs`` (``input_ids``/``attention_mask``, decoder-only prompts
    left-padded) with ``inspector``'s model while recording ``request``; one :class:`GenerationResult` per prompt
    (its generated tokens end at the first end-of-sequence token). ``pad_id`` pads finished sequences; ``extra``
    goes to ``model.generate`` as it is; ``recorders`` run beside the request's (they see every step's calls). Use :meth:`AttentionInspector.generate
    <hf_attn_inspect.capture.inspector.AttentionInspector.generate>`, which checks and encodes the input."""
    model = inspector.model
    enc_dec = inspector.is_encoder_decoder
    inputs = {k: v.to(inspector.device) for k, v in inputs.items()}
    kept = request.recorders(model, weights=GenerationRecorder)
    probe = RecordingProbe([*kept, *recorders])
    kwargs = {**settings.generate_kwargs(), "return_dict_in_generate": True, "output_logits": True,
              "pad_token_id": pad_id, **(extra or {})}

    def work(states: list) -> Any:
        with inspector.capturing(probe, states):
            encoder = None
            if enc_dec:  # run the encoder here, once, so the continuation step below can reuse it
                encoder = model.get_encoder()(**inputs, return_dict=True)
                kwargs["encoder_outputs"] = encoder
            devices = [inspector.device] if inspector.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices, enabled=settings.seed is not None):
                if settings.seed is not None:
                    torch.manual_seed(settings.seed)
                out = model.generate(**inputs, **kwargs)
            _last_row(model, out, inputs, encoder, pad_id)
        return out

    b, width = inputs["input_ids"].shape
    out = inspector.guarded(probe, work, f"{b} x {width} prompt tokens + {settings.max_new_tokens} generated")
    captured = CaptureResult.collect(kept)
    return _results(inspector, inputs, out, captured, request, settings, texts)


def _last_row(model: torch.nn.Module, out: Any, inputs: dict[str, torch.Tensor], encoder: Any, pad_id: int | None) -> None:
    """Feed the last generated token through the cache once more, so its row is computed as generation would."""
    seq = out.sequences
    if encoder is not None:
        model(attention_mask=inputs["attention_mask"], encoder_outputs=encoder, decoder_input_ids=seq[:, -1:],
              cache=out.cache, use_cache=True)
        return
    added = seq.shape[1] - inputs["input_ids"].shape[1]
    mask = torch.cat([inputs["attention_mask"], inputs["attention_mask"].new_ones(seq.shape[0], added)], 1)
    model.generate(input_ids=seq, attention_mask=mask, cache=out.cache, max_new_tokens=1, do_sample=False,
                   pad_token_id=pad_id)


def _end_ids(model: torch.nn.Module) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def _results(
    inspector: Any, inputs: dict[str, torch.Tensor], out: Any, captured: CaptureResult, request: CaptureRequest,
    settings: GenerationSettings, texts: Sequence[str] | None,
) -> list[GenerationResult]:
    enc_dec = inspector.is_encoder_decoder
    weights = captured.pop("weights")
    stacked = {stack: torch.stack([layers[i] for i in sorted(layers)]) for stack, layers in weights.items()}
    main = ENCODER if enc_dec else SELF
    layer_ids = sorted(weights.get(main, {}))
    records = captured.stacked(main) if request.measures else {}
    seq = out.sequences.cpu()
    steps = len(out.logits)
    start = seq.shape[1] - steps  # prompt width (decoder-only: padded prompt; encoder-decoder: decoder start)
    probs = torch.stack([s.float().softmax(-1) for s in out.logits], 1).cpu()  # [batch, steps, vocab]
    mask = inputs["attention_mask"].cpu().bool()
    ends = _end_ids(inspector.model)
    results = []
    for b in range(seq.shape[0]):
        gen = seq[b, start:].tolist()
        n = next((k + 1 for k, t in enumerate(gen) if t in ends), len(gen))
        chosen = probs[b, torch.arange(n), seq[b, start:start + n]]
        src = mask[b].nonzero().flatten()
        if enc_dec:  # the main stack is the encoder over the source; the decoder generates
            keep, ids = src, inputs["input_ids"][b, src].cpu().tolist()
            pos = torch.arange(start + n)
            kw = {
                "decoder_tokens": _tokens(inspector.tokenizer, seq[b, pos].tolist()),
                "decoder_attentions": _cut(stacked[DECODER][:, b], pos, pos),
                "cross_attentions": _cut(stacked[CROSS][:, b], pos, src) if CROSS in stacked else None,
                "decoder_special_tokens_mask": _special(inspector.tokenizer, seq[b, pos].tolist()),
            }
        else:  # the prompt's own positions (left padding dropped), then the generated ones
            keep = torch.cat([src, torch.arange(start, start + n)])
            ids = seq[b, keep].tolist()
            kw = {"is_causal": True}
        attentions = _cut(stacked[main][:, b], keep, keep)
        measures = {}
        if request.measures:
            norms = {"norms": records["norms"][:, b].index_select(2, keep)} if "norms" in records else {}
            measures = compute_measures(request.measures, {"weights": attentions, **norms})
        results.append(GenerationResult(
            tokens=_tokens(inspector.tokenizer, ids),
            attentions=attentions,
            layer_ids=layer_ids,
            head_ids=list(request.heads) if request.heads is not None else [],
            special_tokens_mask=_special(inspector.tokenizer, ids),
            model_name=inspector.name,
            text=None if texts is None else texts[b],
            measures=measures,
            prompt_length=start if enc_dec else int(mask[b].sum()),
            generated_text=_decode(inspector.tokenizer, gen[:n]),
            probabilities=[float(p) for p in chosen],
            alternatives=_alternatives(inspector.tokenizer, probs[b, :n], settings.alternatives),
            generation=settings.as_dict(),
            **kw,
        ))
    return results


def _cut(weights: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``weights [layers, heads, T_q, T_k]`` at the kept ``rows`` and ``cols`` (a new contiguous tensor)."""
    return weights.index_select(2, rows).index_select(3, cols).contiguous()


def _tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    return [str(i) for i in ids] if tokenizer is None else list(tokenizer.convert_ids_to_tokens(ids))


def _special(tokenizer: Any, ids: list[int]) -> list[bool]:
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    return [i in special for i in ids]


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return " ".join(str(i) for i in ids) if tokenizer is None else tokenizer.decode(ids, skip_special_tokens=True)


def _alternatives(tokenizer: Any, probs: torch.Tensor, k: int) -> list[list[list[Any]]]:
    """Per step the ``k`` most probable tokens as ``[token, probability]`` pairs."""
    if k == 0 or probs.numel() == 0:
        return [[] for _ in range(probs.shape[0])]
    top = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[[tok, float(p)] for tok, p in zip(_tokens(tokenizer, i.tolist()), v)] for v, i in zip(top.values, top.indices)]
