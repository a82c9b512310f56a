"""A self-contained, offline, interactive HTML explorer of one :class:`~hf_attn_inspect.AttentionResult`.

One file holds the page, its plain JavaScript and CSS (``hf_attn_inspect/views/static/``) and the data; it
makes no network request (a Content-Security-Policy forbids any) and opens anywhere: a browser, VS Code,
Colab, Jupyter, an e-mail attachment. Views: head view (lines from query tokens to key tokens, one colour
per head), matrix view (heatmap; the value, query and key under the pointer), model view (layers x heads
thumbnails; click to open a head) and the per-head metrics of :func:`hf_attn_inspect.stats.tables.head_metrics`.
Controls: layer, heads (several at once), average heads, rollout
(:func:`hf_attn_inspect.stats.aggregate.attention_rollout`), hide special tokens, sub-word or word level (the
merge of :func:`hf_attn_inspect.stats.aggregate.aggregate_words`, applied in the page), sentence-pair filter,
encoder / decoder / cross attention, light/dark.

Size: every weight is quantised per row to ``LEVELS + 1`` integer levels of ``step = row max / LEVELS``
(stored as one byte; absolute error at most ``row max / (2 * LEVELS)`` = row max / 256, within the
1/255 of the row maximum promised), each head is gzip-compressed and base64-encoded separately, and the
page inflates a head only when it is drawn (``DecompressionStream``). A 512-token input on the 6 x 12
head default model makes a file of about 9 MB. Tokens are data: the JSON is escaped so that no
``</script>`` or ``<!--`` can end the data block, and the page inserts tokens with ``textContent`` only.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import os
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np
import pandas as pd
import torch

from ..capture.result import AttentionResult, GenerationResult
from ..core.errors import InputError, OutputError
from ..core.files import write_text
from ..core.mixing import row_normalise
from ..core.stacks import CROSS, DECODER, SELF, is_self_attention, stack_aliases
from ..core.tokens import clean_token
from ..stats.aggregate import attention_rollout, word_labels, word_units
from ..stats.metrics import METRICS
from ..stats.tables import head_metrics

if TYPE_CHECKING:
    from IPython.display import HTML

    from ..runs.captured import ExplorerCapture

__all__ = [
    "LEVELS",
    "HeadClasses",
    "explorer_html",
    "write_explorer",
    "show",
    "iframe_html",
    "quantize_rows",
    "dequantize_rows",
    "class_lookup",
]

#: A class name per head: a DataFrame with ``layer``, ``head`` and a ``class`` column (or ``head_class``,
#: ``label``, ``category``, ``pattern``), a Series indexed by ``(layer, head)``, or a dict
#: ``{(layer, head): name}``; model indices, 0-based.
HeadClasses = Union[pd.DataFrame, pd.Series, Mapping[tuple[int, int], str]]

#: Quantisation levels per row: weights become integers 0..LEVELS times ``row max / LEVELS``.
LEVELS = 128

_CLASS_COLUMNS = ("class", "head_class", "label", "category", "pattern")


def quantize_rows(weights: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantise ``weights [..., query, key]`` per row: ``(levels uint8 [..., Q, K], step float32 [..., Q])``.

    ``levels * step[..., None]`` restores the weights with absolute error at most ``step / 2`` =
    ``row max / (2 * LEVELS)``; all-zero rows (fully masked) get step 0.
    """
    w = np.asarray(weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else weights, dtype=np.float32)
    row_max = w.max(-1) if w.shape[-1] else np.zeros(w.shape[:-1], np.float32)
    step = (np.maximum(row_max, 0.0) / LEVELS).astype(np.float32)
    safe = np.where(step > 0, step, 1.0)[..., None]
    levels = np.clip(np.rint(w / safe), 0, LEVELS).astype(np.uint8)
    return levels, step


def dequantize_rows(levels: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The weights the page shows: ``levels * step`` in float32 (the inverse of :func:`quantize_rows`)."""
    return levels.astype(np.float32) * step[..., None].astype(np.float32)


def _pack(buf: bytes) -> str:
    return base64.b64encode(gzip.compress(buf, compresslevel=6, mtime=0)).decode("ascii")


def _encode_parts(att: torch.Tensor) -> tuple[list[list[str]], np.ndarray]:
    from concurrent.futures import ThreadPoolExecutor

    levels, step = quantize_rows(att)  # [L, H, Q, K], [L, H, Q]
    nl, nh = levels.shape[:2]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # zlib releases the GIL
        flat = list(pool.map(_pack, (levels[l, h].tobytes() for l in range(nl) for h in range(nh))))
    return [flat[l * nh : (l + 1) * nh] for l in range(nl)], step


def _encode(att: torch.Tensor) -> tuple[list[list[str]], str]:
    packed, step = _encode_parts(att)
    return packed, _pack(np.ascontiguousarray(step, dtype="<f4").tobytes())


def _axis(
    tokens: list[str],
    word_ids: Sequence[int | None] | None,
    special: Sequence[bool] | None,
    segments: Sequence[int | None] | None,
) -> dict[str, Any]:
    n = len(tokens)
    special = [bool(s) for s in (special or [False] * n)]
    segments = list(segments) if segments is not None else [None] * n
    units = word_units(word_ids, special, segments) if word_ids is not None else np.arange(n)
    n_units = int(units.max()) + 1 if n else 0
    unit_special = [False] * n_units
    unit_segment: list[int | None] = [None] * n_units
    for i, u in enumerate(units.tolist()):
        unit_special[u] = unit_special[u] or special[i]
        if unit_segment[u] is None:
            unit_segment[u] = segments[i]
    return {
        "labels": [clean_token(t) for t in tokens],
        "special": special,
        "segment": segments,
        "units": units.tolist(),
        "unit_labels": word_labels(tokens, units) if n else [],
        "unit_special": unit_special,
        "unit_segment": unit_segment,
    }


def class_lookup(classes: HeadClasses | None) -> dict[tuple[int, int], str]:
    """``{(layer, head): class name}`` from a DataFrame (``layer``, ``head`` and a ``class`` column), a Series
    indexed by ``(layer, head)`` or a dict (:data:`HeadClasses`); ``None`` gives an empty dict. Model
    indices, 0-based. Anything else raises :class:`~hf_attn_inspect.core.errors.InputError`."""
    if classes is None:
        return {}
    if isinstance(classes, pd.DataFrame):
        col = next((c for c in _CLASS_COLUMNS if c in classes.columns), None)
        if col is None or not {"layer", "head"} <= set(classes.columns):
            raise InputError(f"classes need columns 'layer', 'head' and one of {', '.join(_CLASS_COLUMNS)}")
        return {(int(l), int(h)): str(c) for l, h, c in zip(classes["layer"], classes["head"], classes[col])}
    if isinstance(classes, (pd.Series, Mapping)):
        return {(int(k[0]), int(k[1])): str(v) for k, v in classes.items()}
    raise InputError("classes must be a DataFrame (layer, head, class), a Series or a dict {(layer, head): class}")


def _classes(classes: HeadClasses | None, layer_ids: list[int], head_ids: list[int]) -> list[str] | None:
    if classes is None:
        return None
    lookup = class_lookup(classes)
    return [lookup.get((l, h), "") for l in layer_ids for h in head_ids]


def _metrics(result: AttentionResult, which: str, importance: pd.DataFrame | None = None) -> dict[str, Any] | None:
    df = head_metrics(result, which=which)
    cols = list(METRICS)
    if importance is not None:  # head importance (runs.importance) next to the pattern metrics
        cols.append("importance")
        df["importance"] = _importance_of(importance, which, df)
    values = df[cols].to_numpy(dtype=np.float64)
    values = np.where(np.isfinite(values), values, 0.0)
    return {"columns": cols, "values": np.round(values, 6).tolist()}


def _importance_of(importance: pd.DataFrame, which: str, df: pd.DataFrame) -> np.ndarray:
    """The ``importance`` of each (layer, head) row of ``df`` for stack ``which`` (NaN where absent)."""
    if not isinstance(importance, pd.DataFrame) or not {"layer", "head", "importance"} <= set(importance.columns):
        raise InputError("importance must be a head_importance table (columns layer, head, importance)")
    imp = importance
    if "stack" in imp.columns:
        imp = imp[imp["stack"].isin(stack_aliases(which))]
    lookup = imp.groupby(["layer", "head"])["importance"].mean()
    keys = pd.MultiIndex.from_arrays([df["layer"].to_numpy(), df["head"].to_numpy()])
    return lookup.reindex(keys).to_numpy(dtype=np.float64)


def _payload(
    result: AttentionResult,
    classes: HeadClasses | None,
    metrics: bool,
    rollout: bool,
    pooled: ExplorerCapture | None = None,
    importance: pd.DataFrame | None = None,
) -> dict[str, Any]:
    if pooled is not None:
        rollout = False  # rollout multiplies token-level matrices of consecutive layers: pooled layers have none
        if classes is None and SELF in pooled.tables:
            classes = pooled.tables[SELF]
    axes = {"enc": _axis(result.tokens, result.word_ids, result.special_tokens_mask, result.segment_ids)}
    names = [(SELF, "encoder self-attention" if result.is_encoder_decoder else "self-attention", "enc", "enc")]
    if result.is_encoder_decoder:
        axes["dec"] = _axis(result.decoder_tokens or [], result.decoder_word_ids, result.decoder_special_tokens_mask, None)
        names.append((DECODER, "decoder self-attention", "dec", "dec"))
        if result.cross_attentions is not None:
            names.append((CROSS, "cross-attention (decoder \u2192 encoder)", "dec", "enc"))
    contiguous = bool(result.layer_ids) and result.layer_ids == list(range(result.layer_ids[0], result.layer_ids[0] + len(result.layer_ids)))
    stacks: dict[str, Any] = {}
    for which, label, qa, ka in names:
        att = result.stack(which)[0].float()
        merged = pooled is not None and which in pooled.pooled  # _add_pooled encodes the full layers itself
        packed, steps = ([], "") if merged else _encode(att)
        entry: dict[str, Any] = {
            "label": label,
            "layer_ids": list(result.layer_ids),
            "head_ids": list(result.head_ids),
            "nq": int(att.shape[-2]),
            "nk": int(att.shape[-1]),
            "q_axis": qa,
            "k_axis": ka,
            "levels": packed,
            "steps": steps,
            "rollout": None,
            "metrics": _metrics(result, which, importance) if metrics and is_self_attention(which) and pooled is None else None,
            "classes": _classes(classes, list(result.layer_ids), list(result.head_ids)) if which == SELF else None,
        }
        if rollout and is_self_attention(which) and contiguous:
            roll = attention_rollout(att)[:, None]  # [L, 1, T, T]
            r_packed, r_steps = _encode(roll)
            entry["rollout"] = {"levels": [p[0] for p in r_packed], "steps": r_steps}
        if merged:
            _add_pooled(entry, att, result, pooled, which, metrics, classes)
        elif which == SELF and result.measures:
            entry["measures"] = _measures(result)
        stacks[which] = entry
    payload = {
        "version": 1,
        "levels": LEVELS,
        "model": result.model_name,
        "text": result.text,
        "text_pair": result.text_pair,
        "truncated": bool(getattr(result, "truncated", False)),
        "kept_chars": list(getattr(result, "kept_chars", None) or [None, None]),
        "has_pair": any(s == 1 for s in (result.segment_ids or [])),
        "is_causal": result.is_causal,
        "is_encoder_decoder": result.is_encoder_decoder,
        "axes": axes,
        "stacks": stacks,
        "metric_names": (list(METRICS) + (["importance"] if importance is not None else [])) if metrics else [],
        **({"image": _image_payload(result)} if result.grid is not None and result.image is not None else {}),
    }
    if isinstance(result, GenerationResult):  # the generation mode (static/explorer_generation.js) reads this
        payload["generation"] = {
            "stack": result.stack_name,
            "prompt_length": result.prompt_length,
            "probabilities": list(result.probabilities),
            "alternatives": [[[clean_token(t), p] for t, p in step] for step in result.alternatives],
            "cross": CROSS in stacks,
        }
    return payload


def _image_payload(result: AttentionResult) -> dict[str, Any]:
    """An image result's picture (PNG, base64) and patch grid for the explorer's image mode."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(result.image[: result.grid.height, : result.grid.width])).save(buf, format="PNG")
    return {"png": base64.b64encode(buf.getvalue()).decode("ascii"), "grid": result.grid.to_dict()}


def _measures(result: AttentionResult) -> dict[str, Any]:
    """The page data of the result's measures, each ``{levels, steps}`` like the weights: rows normalised to
    shares summing to 1, per-layer measures repeated over the heads (so every view draws them as it is)."""
    out = {}
    for name, m in result.measures.items():
        m = row_normalise(m.float().clamp_min(0))
        if m.dim() == 3:
            m = m[:, None].expand(-1, result.num_heads, -1, -1)
        packed, steps = _encode(m.contiguous())
        out[name] = {"levels": packed, "steps": steps}
    return out


def _ranges(ids: list[int]) -> str:
    """``0, 2-5`` for ``[0, 2, 3, 4, 5]``."""
    out: list[str] = []
    for i in ids:
        if out and out[-1].split("\u2013")[-1] == str(i - 1):
            out[-1] = out[-1].split("\u2013")[0] + "\u2013" + str(i)
        else:
            out.append(str(i))
    return ", ".join(out)


def _add_pooled(
    entry: dict[str, Any],
    att: torch.Tensor,
    result: AttentionResult,
    cap: ExplorerCapture,
    which: str,
    metrics: bool,
    classes: HeadClasses | None,
) -> None:
    """Merge the pooled layers of ``which`` into the stack's page data (layers in model order).

    A pooled layer's head is drawn as its block means: block sum / query rows of the block, the share of one
    query's attention that goes to each key block (quantised per row like full weights). ``entry["pooled"]``
    gives per layer (index into ``layer_ids``) whether it is pooled, its matrix sides, where its rows start
    in ``steps``, the block edges (token positions) and the note the page shows.
    """
    ps = cap.pooled[which]
    full_ids = list(result.layer_ids)
    full_packed, full_steps = _encode_parts(att)  # [Lf, H, Q]
    q_edges, k_edges = ps.q_edges.numpy(), ps.k_edges.numpy()
    rows = np.diff(q_edges).astype(np.float64)
    means = ps.sums / torch.from_numpy(rows)[None, None, :, None]
    pooled_packed, pooled_steps = _encode_parts(means.float())
    layer_ids = sorted(set(full_ids) | set(ps.layer_ids))
    levels, steps, flags, nqs, nks, bases = [], [], [], [], [], []
    base = 0
    for lid in layer_ids:
        if lid in full_ids:
            k = full_ids.index(lid)
            levels.append(full_packed[k]); steps.append(full_steps[k]); flags.append(False)
            nqs.append(int(att.shape[-2])); nks.append(int(att.shape[-1]))
        else:
            k = ps.layer_ids.index(lid)
            levels.append(pooled_packed[k]); steps.append(pooled_steps[k]); flags.append(True)
            nqs.append(len(q_edges) - 1); nks.append(len(k_edges) - 1)
        bases.append(base)
        base += int(steps[-1].size)
    nh = int(ps.sums.shape[1])
    head_ids = entry["head_ids"] or list(range(nh))
    q_size, k_size = int(q_edges[1] - q_edges[0]), int(k_edges[1] - k_edges[0])
    pooled_ids = [i for i, f in zip(layer_ids, flags) if f]
    full_shown = [i for i, f in zip(layer_ids, flags) if not f]
    size = f"{q_size} token{'s' * (q_size != 1)}" if q_size == k_size else f"{q_size} x {k_size} tokens"
    note = (
        f"Long input: the full attention of every layer does not fit the memory budget ({cap.budget.describe()}). "
        f"Layer{'s' * (len(pooled_ids) != 1)} {_ranges(pooled_ids)} {'are' if len(pooled_ids) != 1 else 'is'} "
        f"pooled: each head is drawn as {len(q_edges) - 1} x {len(k_edges) - 1} blocks of {size} (a cell is the "
        "share of one query's attention that goes to the key block, averaged over the block's queries; axes are "
        "token positions). "
        + (f"Token-level weights: layer{'s' * (len(full_shown) != 1)} {_ranges(full_shown)}. " if full_shown
           else "No layer has token-level weights (view TEXT --layers L keeps chosen layers in full). ")
        + "The head view, word level, hiding special tokens, the pair filter and rollout need token-level weights, "
        "so they are off for pooled layers. Metrics of every head come from the exact weights, measured block by block."
    )
    entry.update({
        "layer_ids": layer_ids,
        "head_ids": head_ids,
        "levels": levels,
        "steps": _pack(np.ascontiguousarray(np.concatenate([s.reshape(-1) for s in steps]), dtype="<f4").tobytes()),
        "pooled": {
            "layers": flags, "nq": nqs, "nk": nks, "step_base": bases,
            "q_edges": q_edges.tolist(), "k_edges": k_edges.tolist(), "q_block": q_size, "k_block": k_size,
            "note": note,
        },
    })
    table = cap.tables.get(which)
    if metrics and table is not None and not table.empty:
        t = table.set_index(["layer", "head"])
        values = np.array([[float(t.loc[(l, h), m]) for m in METRICS] for l in layer_ids for h in head_ids])
        values = np.where(np.isfinite(values), values, 0.0)
        entry["metrics"] = {"columns": list(METRICS), "values": np.round(values, 6).tolist()}
    entry["classes"] = _classes(classes, layer_ids, head_ids) if which == SELF else None


def _script_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``<``, ``>``, ``&`` or line separators appear literally."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


@lru_cache(maxsize=None)
def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def explorer_html(
    result: AttentionResult,
    *,
    classes: HeadClasses | None = None,
    metrics: bool = True,
    rollout: bool = True,
    title: str | None = None,
    importance: pd.DataFrame | None = None,
    pooled: ExplorerCapture | None = None,
) -> str:
    """The explorer page of ``result`` as one HTML string (UTF-8 text, fully offline).

    ``classes`` optionally names each head (a DataFrame with ``layer``, ``head`` and a ``class`` column,
    a Series indexed by ``(layer, head)``, or a dict ``{(layer, head): name}``, model indices) and is shown
    in the metrics panel. ``metrics=False`` leaves out the metrics panel's numbers; ``rollout=False``
    leaves out the precomputed rollout (it is also left out when the captured layers are not consecutive).
    ``importance`` (a :func:`~hf_attn_inspect.runs.importance.head_importance` table) adds an
    ``importance`` column to the metrics view, next to the pattern metrics.
    ``pooled`` (a :class:`~hf_attn_inspect.runs.captured.ExplorerCapture` of a long input, whose ``result``
    this is) adds its pooled layers, drawn as block heatmaps with a note saying so, every head's metrics
    from its block-by-block statistics, and leaves the rollout out.
    """
    if not isinstance(result, AttentionResult):
        raise InputError(f"explorer needs an AttentionResult, got {type(result).__name__}")
    if result.seq_len == 0:
        raise InputError("the result has no tokens")
    if result.num_layers == 0 and not (pooled and pooled.pooled):
        raise InputError("the result has no layers to draw")
    data = _script_json(_payload(result, classes, metrics, rollout, pooled, importance))
    js = _static("explorer.js")
    if result.grid is not None and result.image is not None:  # a mode file registers before the page starts
        js = _static("explorer_image.js") + "\n" + js
    if isinstance(result, GenerationResult):
        js = _static("explorer_generation.js") + "\n" + js
    if result.measures:  # the measure selector (static/explorer_measures.js) runs after explorer.js
        js = js + "\n" + _static("explorer_measures.js")
    if "</script" in js.lower() or "<!--" in js:
        raise OutputError("explorer.js and its modes must not contain '</script' or '<!--'")
    page_title = title or f"attention: {result.model_name or 'model'}"
    page = _static("explorer.html")
    head, rest = page.split("@@DATA@@", 1)
    head = head.replace("@@TITLE@@", html.escape(page_title)).replace("@@CSS@@", _static("explorer.css"))
    rest = rest.replace("@@JS@@", js)
    return head + data + rest


def write_explorer(result: AttentionResult, path: str | os.PathLike, **options: Any) -> Path:
    """Write :func:`explorer_html` of ``result`` to ``path`` atomically (temporary file, then rename); returns
    the path. ``options`` are :func:`explorer_html`'s (``classes``, ``metrics``, ``rollout``, ``title``,
    ``importance``, ``pooled``)."""
    return write_text(explorer_html(result, **options), path)


def iframe_html(page: str, height: int = 720) -> str:
    """``page`` (a full explorer document) as an ``<iframe srcdoc>`` element, for notebook outputs.

    The document is attribute-escaped, and the frame is sandboxed to scripts only (no same-origin
    access to the notebook, no forms, no pop-ups).
    """
    return (
        f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:{int(height)}px;'
        f'border:0" sandbox="allow-scripts"></iframe>'
    )


def show(
    result: AttentionResult,
    *,
    height: int = 720,
    classes: HeadClasses | None = None,
    metrics: bool = True,
    rollout: bool = True,
    title: str | None = None,
) -> HTML | str:
    """Display the explorer (:func:`explorer_html`, same options) inline in Jupyter / VS Code / Colab.

    In IPython it displays an ``<iframe srcdoc>`` ``height`` pixels high and returns the ``HTML`` display
    object. Outside IPython the page is written to a temporary file (``hf-attn-inspect-explorer-*.html``
    in the temporary folder, no folder of its own; a later call removes such pages older than an hour),
    opened in the default web browser, and the file's path is returned.
    """
    text = explorer_html(result, classes=classes, metrics=metrics, rollout=rollout, title=title)
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:  # pragma: no cover - IPython is present wherever notebooks run
        get_ipython = None  # type: ignore[assignment]
    if get_ipython is not None and get_ipython() is not None:
        frame = HTML(iframe_html(text, height))
        display(frame)
        return frame
    import webbrowser

    page = write_text(text, _page_path())
    webbrowser.open(page.as_uri())
    return str(page)


#: Pages that :func:`show` wrote outside a notebook are removed by a later call once this many seconds old
#: (the browser has read them by then).
PAGE_LIFETIME_S = 3600


def _page_path() -> Path:
    """A new ``hf-attn-inspect-explorer-*.html`` file directly in the temporary folder (no folder of its own);
    such pages older than :data:`PAGE_LIFETIME_S` are removed first, so they do not pile up."""
    import time

    folder = Path(tempfile.gettempdir())
    for old in folder.glob("hf-attn-inspect-explorer-*.html"):
        try:
            if time.time() - old.stat().st_mtime > PAGE_LIFETIME_S:
                old.unlink()
        except OSError:
            continue
    fd, name = tempfile.mkstemp(prefix="hf-attn-inspect-explorer-", suffix=".html", dir=folder)
    os.close(fd)
    return Path(name)
