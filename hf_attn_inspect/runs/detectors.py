"""Head detectors: score every head as a previous-token, duplicate-token or induction head.

Inputs are blocks of random token ids repeated (:func:`repeated_random_tokens`), on which each pattern
has known keys (:func:`pattern_mask`); :func:`detect_heads` runs them through a model and reports the
share of each scored query's attention that lands on those keys (Olsson et al. 2022's induction score).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..capture.inputs import Batch
from ..capture.inspector import AttentionInspector
from ..capture.recorders import AttentionCall, Recorder
from ..core.errors import CaptureError, InputError

__all__ = ["DETECTOR_KINDS", "repeated_random_tokens", "pattern_mask", "detect_heads"]

#: The patterns :func:`detect_heads` scores.
DETECTOR_KINDS = ("previous_token", "duplicate_token", "induction")


def repeated_random_tokens(
    vocab: Sequence[int] | int,
    *,
    seq_len: int = 20,
    repeats: int = 2,
    num_sequences: int = 16,
    seed: int = 0,
    bos: int | None = None,
) -> torch.Tensor:
    """``[num_sequences, (1 if bos) + seq_len * repeats]`` token ids: a random block repeated ``repeats`` times.

    Each block draws ``seq_len`` distinct ids from ``vocab`` (a list of ids, or ``range(vocab)``) with a
    :class:`torch.Generator` seeded by ``seed``, so a token occurs exactly once per block. ``bos``, when
    given, is prepended at position 0.
    """
    ids = torch.as_tensor(list(range(vocab)) if isinstance(vocab, int) else list(vocab), dtype=torch.long)
    if seq_len > ids.numel():
        raise InputError(f"seq_len {seq_len} is larger than the {ids.numel()} usable token ids")
    if seq_len < 2 or repeats < 2 or num_sequences < 1:
        raise InputError("need seq_len >= 2, repeats >= 2 and at least one sequence")
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.stack([ids[torch.randperm(ids.numel(), generator=gen)[:seq_len]] for _ in range(num_sequences)])
    seqs = blocks.repeat(1, repeats)
    if bos is not None:
        seqs = torch.cat([torch.full((num_sequences, 1), int(bos), dtype=torch.long), seqs], 1)
    return seqs


def pattern_mask(tokens: torch.Tensor, kind: str, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keys [B, T, T], rows [B, T])`` for a detector: which keys ``j`` of query ``i`` form the pattern, and
    which query rows are scored (those with at least one pattern key, at positions ``>= start``).

    ``previous_token``: ``j = i - 1`` (rows ``i >= start + 1``, so a BOS at ``start - 1`` is never the
    previous token); ``duplicate_token``: ``j < i`` with ``token[j] == token[i]``; ``induction``:
    ``start + 1 <= j <= i`` with ``token[j-1] == token[i]`` (the token after an earlier copy of the
    current token).
    """
    if kind not in DETECTOR_KINDS:
        raise InputError(f"unknown detector '{kind}'; choose one of {', '.join(DETECTOR_KINDS)}")
    b, t = tokens.shape
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    pos_ok = (torch.arange(t) >= start)[None, :]
    if kind == "previous_token":
        keys = ((j == i - 1) & (j >= start)).expand(b, t, t)
    elif kind == "duplicate_token":
        same = tokens[:, :, None] == tokens[:, None, :]
        keys = same & (j < i) & (j >= start)
    else:
        prev = torch.cat([torch.full((b, 1), -1, dtype=tokens.dtype), tokens[:, :-1]], 1)  # token[j-1]
        same = tokens[:, :, None] == prev[:, None, :]
        keys = same & (j <= i) & (j >= start + 1)
    rows = keys.any(-1) & pos_ok
    return keys, rows


class _DetectorRecorder(Recorder):
    """Accumulates, per layer and head, the attention share on the pattern keys over the scored rows."""

    needs_weights = True

    def __init__(self, keys: torch.Tensor, rows: torch.Tensor, stack: str) -> None:
        self.keys = keys.float()
        self.rows = rows.float()
        self.stack = stack
        self.scores: dict[int, torch.Tensor] = {}

    def record(self, call: AttentionCall) -> None:
        site, weights = call.site, call.weights
        if site.stack != self.stack:
            return
        keys = self.keys.to(weights.device)
        rows = self.rows.to(weights.device)
        share = (weights.float() * keys[:, None]).sum(-1)  # [B, H, T]
        self.scores[site.layer] = ((share * rows[:, None]).sum((0, 2)) / rows.sum().clamp_min(1.0)).cpu()


def detect_heads(
    inspector: AttentionInspector,
    kind: str,
    *,
    seq_len: int = 20,
    num_sequences: int = 16,
    seed: int = 0,
    tokens: torch.Tensor | None = None,
    bos: int | None | str = "auto",
) -> pd.DataFrame:
    """Score every head as a previous-token, duplicate-token or induction head: DataFrame ``layer, head, score``.

    ``score`` is the share of each scored query's attention that falls on the pattern's keys (see
    :func:`pattern_mask`), averaged over the scored rows of all sequences: 1 means every scored query
    puts all its weight on the pattern, and a head spreading its weight evenly over ``i + 1`` causal keys
    scores about ``1 / (i + 1)``. Inputs are ``num_sequences`` blocks of ``seq_len`` distinct random
    token ids repeated twice (:func:`repeated_random_tokens`, seeded by ``seed``), drawn from the
    model's vocabulary without the tokenizer's special tokens, or your own ``tokens [B, T]``. BOS
    handling: with ``bos="auto"`` the tokenizer's BOS (else CLS, else the config's ``bos_token_id``) is
    prepended at position 0 because decoders are trained with it and park attention there; it is never
    a scored query nor a pattern key (so weight parked on BOS lowers the score). ``bos=None`` prepends
    nothing. Encoder-decoder models are scored on their decoder self-attention.
    """
    if kind not in DETECTOR_KINDS:
        raise InputError(f"unknown detector '{kind}'; choose one of {', '.join(DETECTOR_KINDS)}")
    model = inspector.model
    tok = getattr(inspector, "tokenizer", None)
    if bos == "auto":
        bos = None
        for source, attr in ((tok, "bos_token_id"), (tok, "cls_token_id"), (model.config, "bos_token_id")):
            value = getattr(source, attr, None) if source is not None else None
            if isinstance(value, int):
                bos = value
                break
    if tokens is None:
        size = model.get_input_embeddings().num_embeddings
        if tok is not None:
            size = min(size, len(tok))
        special = set(getattr(tok, "all_special_ids", []) or []) | ({bos} if bos is not None else set())
        vocab = [i for i in range(size) if i not in special]
        tokens = repeated_random_tokens(vocab, seq_len=seq_len, num_sequences=num_sequences, seed=seed, bos=bos)
        start = 0 if bos is None else 1
    else:
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.dim() != 2:
            raise InputError(f"tokens must be [sequences, length], got {tuple(tokens.shape)}")
        start = 1 if bos is not None and bool((tokens[:, 0] == bos).all()) else 0
    keys, rows = pattern_mask(tokens, kind, start)
    enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    inputs = {"input_ids": tokens}  # the batch adds the all-real attention masks
    if enc_dec:
        inputs["decoder_input_ids"] = tokens
    batch = Batch(inputs=inputs)
    probe = _DetectorRecorder(keys, rows, "decoder" if enc_dec else "self")
    inspector.run(batch, probe)
    if not probe.scores:
        raise CaptureError(f"no attention was captured from {type(model).__name__}")
    layers = sorted(probe.scores)
    scores = torch.stack([probe.scores[l] for l in layers]).numpy()  # [L, H]
    l, h = np.meshgrid(layers, np.arange(scores.shape[1]), indexing="ij")
    return pd.DataFrame({"layer": l.ravel(), "head": h.ravel(), "score": scores.ravel()})
