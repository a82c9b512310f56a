"""Per-sentence objectives of head importance (higher = worse), and the one each model type gets."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from ...capture.inputs import Batch
from ...capture.inspector import AttentionInspector
from ...core.errors import CaptureError, InputError

__all__ = ["Objective", "ObjectiveFn", "default_objective"]

#: A user objective: ``(model output, batch) -> [batch]`` per-sentence losses (higher = worse).
ObjectiveFn = Callable[[ModelOutput, Batch], torch.Tensor]


class Objective:
    """A per-sentence objective (higher = worse) for head importance; see :func:`default_objective`.

    ``prepare(batch, rows)`` returns the model inputs (e.g. with tokens masked) and the targets (tensors
    with a leading batch dimension, repeated with the inputs when a batch is copied); ``loss(output,
    targets)`` the ``[batch]`` losses; ``accuracy`` ``[batch]`` 0/1 values or None; ``grad_values`` what the
    gradient method differentiates per sentence (default: the loss) and ``grad_scale`` its factor.
    ``needs_reference``: the targets need the intact model's output (:meth:`set_reference`).
    """

    name = "objective"
    unit = ""
    kind = "custom"
    has_accuracy = False
    needs_reference = False
    grad_scale = 1.0

    def prepare(self, batch: Batch, rows: Sequence[int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Model inputs and targets of ``batch`` (``rows``: dataset row of each sentence, for seeding)."""
        return dict(batch.inputs), {k: v for k, v in batch.inputs.items()}

    def set_reference(self, output: ModelOutput, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Targets completed with the intact model's ``output`` (only when ``needs_reference``)."""
        return targets

    def loss(self, output: ModelOutput, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[batch]`` per-sentence objective."""
        raise NotImplementedError

    def accuracy(self, output: ModelOutput, targets: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """``[batch]`` 0/1 correctness, or None when the objective has no accuracy."""
        return None

    def grad_values(self, output: ModelOutput, targets: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """``[batch]`` values whose gradients w.r.t. the gates are the gradient importance (times ``grad_scale``)."""
        return self.loss(output, targets)


def _token_ce(logits: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy per sentence (nats) over positions whose token and next token are real."""
    pred, tgt = logits[:, :-1], ids[:, 1:]
    m = (valid[:, 1:] & valid[:, :-1]).to(logits.device)
    ce = F.cross_entropy(pred.float().transpose(1, 2), tgt.to(logits.device), reduction="none")
    return (ce * m).sum(1) / m.sum(1).clamp(min=1)


class _CausalLM(Objective):
    name, unit, kind = "next-token cross-entropy", "nats", "causal_lm"

    def prepare(self, batch, rows):
        return dict(batch.inputs), {"ids": batch.inputs["input_ids"], "valid": batch.inputs["attention_mask"].bool()}

    def loss(self, output, targets):
        return _token_ce(output.logits, targets["ids"], targets["valid"])


class _Seq2SeqLM(Objective):
    name, unit, kind = "decoder next-token cross-entropy", "nats", "seq2seq_lm"

    def prepare(self, batch, rows):
        return dict(batch.inputs), {"ids": batch.inputs["decoder_input_ids"],
                                    "valid": batch.inputs["decoder_attention_mask"].bool()}

    def loss(self, output, targets):
        return _token_ce(output.logits, targets["ids"], targets["valid"])


class _MaskedLM(Objective):
    name, unit, kind = "masked-LM cross-entropy (15 % of tokens masked, seeded)", "nats", "masked_lm"

    def __init__(self, mask_token_id: int, seed: int = 0, rate: float = 0.15) -> None:
        self.mask_token_id, self.seed, self.rate = int(mask_token_id), seed, rate

    def prepare(self, batch, rows):
        ids = batch.inputs["input_ids"]
        ok = batch.inputs["attention_mask"].bool().cpu()
        if batch.special is not None:
            ok &= ~batch.special
        draws = torch.stack([torch.rand(ids.shape[1], generator=torch.Generator().manual_seed(self.seed * 1_000_003 + int(r)))
                             for r in rows])
        draws = torch.where(ok, draws, torch.full_like(draws, 2.0))
        chosen = (draws < self.rate) & ok
        first = draws.argmin(1)  # every sentence with a maskable token masks at least one
        chosen[torch.arange(len(rows)), first] |= ok[torch.arange(len(rows)), first]
        inputs = dict(batch.inputs)
        inputs["input_ids"] = torch.where(chosen.to(ids.device), torch.full_like(ids, self.mask_token_id), ids)
        return inputs, {"ids": ids, "masked": chosen}

    def loss(self, output, targets):
        m = targets["masked"].to(output.logits.device)
        ce = F.cross_entropy(output.logits.float().transpose(1, 2), targets["ids"].to(m.device), reduction="none")
        return (ce * m).sum(1) / m.sum(1).clamp(min=1)


class _Classification(Objective):
    name, unit, kind, has_accuracy = "classification cross-entropy", "nats", "classification", True

    def prepare(self, batch, rows):
        return dict(batch.inputs), {"labels": batch.inputs["labels"]}

    def loss(self, output, targets):
        return F.cross_entropy(output.logits.float(), targets["labels"].to(output.logits.device), reduction="none")

    def accuracy(self, output, targets):
        return (output.logits.argmax(-1) == targets["labels"].to(output.logits.device)).float()


class _Embedding(Objective):
    name, unit, kind, needs_reference = "1 - cosine similarity of the pooled final hidden state", "1 - cos", "embedding", True
    grad_scale = math.sqrt(math.pi / 2)

    def __init__(self, pooling: str = "mean", seed: int = 0) -> None:
        self.pooling, self.seed = pooling, seed

    def prepare(self, batch, rows):
        return dict(batch.inputs), {"valid": batch.inputs["attention_mask"].bool()}

    def pooled(self, output: ModelOutput, valid: torch.Tensor) -> torch.Tensor:
        h = getattr(output, "last_hidden_state", None)
        if h is None:
            h = getattr(output, "encoder_last_hidden_state", None)
        if h is None:
            raise CaptureError("the model output has no last_hidden_state to compare; pass objective=...")
        v = valid.to(h.device)[..., None].to(h.dtype)
        if self.pooling == "cls":
            return h[:, 0]
        if self.pooling == "max":
            return h.masked_fill(v == 0, torch.finfo(h.dtype).min).amax(1)
        return (h * v).sum(1) / v.sum(1).clamp(min=1)

    def set_reference(self, output, targets):
        return {**targets, "ref": self.pooled(output, targets["valid"]).detach()}

    def loss(self, output, targets):
        e = self.pooled(output, targets["valid"])
        return (1 - F.cosine_similarity(e.float(), targets["ref"].to(e.device).float(), dim=-1)).clamp_min(0)

    def grad_values(self, output, targets, rows):
        e = F.normalize(self.pooled(output, targets["valid"]).float(), dim=-1)
        u = torch.stack([torch.randn(e.shape[-1], generator=torch.Generator().manual_seed(self.seed * 7919 + int(r)))
                         for r in rows]).to(e.device)
        return (u * e).sum(-1)


class _Custom(Objective):
    name, unit, kind = "custom objective", "", "custom"

    def __init__(self, fn: ObjectiveFn) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", "custom objective")

    def prepare(self, batch, rows):
        return dict(batch.inputs), dict(batch.inputs)

    def loss(self, output, targets):
        inputs = {k: v for k, v in targets.items() if k != "labels"}
        b = Batch(inputs=inputs)
        out = self.fn(output, b)
        if not torch.is_tensor(out) or out.dim() != 1 or out.shape[0] != b.size:
            raise InputError(f"the objective must return one value per sentence ([{b.size}]), got "
                             f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}")
        return out.float()


def _pooling_of(inspector: AttentionInspector) -> str:
    """The sentence-transformers pooling of the model's directory (``1_Pooling/config.json``), else ``mean``."""
    path = Path(str(getattr(inspector.config, "_name_or_path", "") or ""))
    cfg = path / "1_Pooling" / "config.json"
    if cfg.is_file():
        try:
            pool = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "mean"
        if pool.get("pooling_mode_cls_token"):
            return "cls"
        if pool.get("pooling_mode_max_tokens"):
            return "max"
    return "mean"


def default_objective(inspector: AttentionInspector, *, labels: bool = False, seed: int = 0) -> Objective:
    """The objective :func:`head_importance` uses for ``inspector``'s model (see the module docstring).

    ``labels``: the data has a label column (needed for sequence classification). Raises
    :class:`InputError` for a classification model without labels.
    """
    model = inspector.model
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        if not labels:
            raise InputError("a sequence-classification model needs labels: pass --label-column (label_column=...)")
        return _Classification()
    if inspector.is_encoder_decoder and hasattr(model, "lm_head"):
        return _Seq2SeqLM()
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return _CausalLM()
    if name.endswith("ForMaskedLM"):
        mask = getattr(inspector.tokenizer, "mask_token_id", None) if inspector.tokenizer is not None else None
        if mask is None:
            raise InputError("a masked-LM model needs a tokenizer with a mask token")
        return _MaskedLM(mask, seed)
    return _Embedding(_pooling_of(inspector), seed)


def resolve_objective(inspector: AttentionInspector, objective: Objective | ObjectiveFn | None, labels: bool, seed: int) -> Objective:
    if objective is None:
        return default_objective(inspector, labels=labels, seed=seed)
    if isinstance(objective, Objective):
        return objective
    if callable(objective):
        return _Custom(objective)
    raise InputError(f"objective must be None, an Objective or a callable (output, batch) -> [batch], not {type(objective).__name__}")
