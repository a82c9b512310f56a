"""How the measures of one result share each row among token groups, and where they disagree.

Every measure (``result.measure(name)``, see :data:`~hf_attn_inspect.capture.measures.MEASURES`) says how much
each query token takes from each key token; rows are normalised here to shares that sum to 1, so measures in
different units (weights, vector norms, cosine distances) compare. :func:`token_groups` sorts the tokens into
``first`` (position 0), ``special`` (the tokenizer's other special tokens), ``punctuation`` and ``other``;
:func:`token_shares` gives each group's share per measure, layer and head; :func:`disagreement_report` says in
plain words how the measures differ for this input.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from ..capture.result import AttentionResult
from ..core.mixing import mixing_ratio, row_normalise
from ..core.tokens import is_punctuation

__all__ = ["GROUPS", "token_groups", "token_shares", "disagreement_report"]

#: The token groups of :func:`token_groups`, in order.
GROUPS = ("first", "special", "punctuation", "other")


def token_groups(result: AttentionResult) -> list[str]:
    """The group of each token of ``result``: ``first`` (position 0: [CLS], <s>, a GPT's first token),
    ``special`` (the tokenizer's other special tokens: [SEP]...), ``punctuation`` (tokens made only of
    punctuation) or ``other``."""
    special = result.special_tokens_mask or [False] * result.seq_len
    return ["first" if i == 0 else "special" if special[i] else "punctuation" if is_punctuation(tok) else "other"
            for i, tok in enumerate(result.tokens)]


def _group_shares(m: torch.Tensor, groups: list[str]) -> torch.Tensor:
    """``[..., len(GROUPS)]``: each group's share of the rows of ``m [..., T, T]``, averaged over query rows."""
    shares = row_normalise(m.float().clamp_min(0)).mean(-2)  # [..., T]: mean share of each key token
    member = torch.tensor([[g == name for name in GROUPS] for g in groups], dtype=torch.float32)  # [T, G]
    return shares @ member


def token_shares(result: AttentionResult, names: Sequence[str]) -> pd.DataFrame:
    """One row per measure, layer, head and token group: ``measure, layer, head, group, share``.

    ``share`` is the group's share of the measure's rows (rows normalised to 1, averaged over query tokens);
    ``head`` is -1 for per-layer measures (``[layers, T, T]``), the model's head index for per-head ones.
    Each measure must be in ``result`` (``weights`` always is).
    """
    groups = token_groups(result)
    rows = []
    for name in names:
        m = result.measure(name)
        shares = _group_shares(m, groups)
        per_head = m.dim() == 4
        for li, layer in enumerate(result.layer_ids):
            heads = [(hi, h) for hi, h in enumerate(result.head_ids)] if per_head else [(None, -1)]
            for hi, head in heads:
                values = shares[li, hi] if per_head else shares[li]
                rows.extend((name, layer, head, g, float(v)) for g, v in zip(GROUPS, values.tolist()))
    return pd.DataFrame(rows, columns=["measure", "layer", "head", "group", "share"])


def disagreement_report(result: AttentionResult, names: Sequence[str]) -> str:
    """A short markdown report: per measure the mixing ratio (the share of each row from other tokens,
    Kobayashi et al. 2021) and each token group's share averaged over layers (and heads), then the sentences
    that say where the measures disagree most for this input (the group whose share varies most between
    measures, and the key token each measure credits most in the last layer)."""
    groups = token_groups(result)
    tokens = result.display_tokens
    lines = ["# How the measures attribute this input\n", f"Model: {result.model_name or 'unknown'}  ",
             f"Tokens ({result.seq_len}): {' '.join(tokens)}\n",
             "Each measure's rows are turned into shares that sum to 1, so the numbers compare across measures.\n",
             "| measure | mixing ratio | " + " | ".join(GROUPS) + " | top key token (last layer) |",
             "|---|---|" + "---|" * len(GROUPS) + "---|"]
    table = {}
    for name in names:
        m = result.measure(name)
        shares = _group_shares(m, groups).reshape(-1, len(GROUPS)).mean(0)
        ratio = float(mixing_ratio(m).mean())
        last = row_normalise(m[-1].float().clamp_min(0))
        last = last.mean(0) if last.dim() == 3 else last  # per head: average the heads
        top = int(last.mean(0).argmax())
        table[name] = (ratio, shares, tokens[top])
        lines.append(f"| {name} | {ratio:.2f} | " + " | ".join(f"{s:.2f}" for s in shares.tolist())
                     + f" | {tokens[top]} |")
    lines.append("")
    if len(table) > 1:
        spread = torch.stack([s for _, s, _ in table.values()])  # [measures, G]
        g = int((spread.max(0).values - spread.min(0).values).argmax())
        hi = max(table, key=lambda n: table[n][1][g])
        lo = min(table, key=lambda n: table[n][1][g])
        lines.append(f"- The measures disagree most about the **{GROUPS[g]}** tokens: {hi} gives them "
                     f"{table[hi][1][g]:.0%} of each row, {lo} only {table[lo][1][g]:.0%}.")
        most = max(table, key=lambda n: table[n][0])
        least = min(table, key=lambda n: table[n][0])
        lines.append(f"- {most} says tokens mix the most ({table[most][0]:.0%} of each row from other tokens), "
                     f"{least} the least ({table[least][0]:.0%}).")
        tops = {n: t for n, (_, _, t) in table.items()}
        if len(set(tops.values())) > 1:
            lines.append("- In the last layer the most credited key token differs: "
                         + ", ".join(f"{n}: '{t}'" for n, t in tops.items()) + ".")
        else:
            lines.append(f"- In the last layer every measure credits '{next(iter(tops.values()))}' most.")
    lines.append("\nSee docs/guides/measures.md for what each measure means.")
    return "\n".join(lines) + "\n"
