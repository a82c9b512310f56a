"""Images as inputs: vision transformers (ViT, DeiT, DINOv2 with or without registers, CLIP's vision tower).

An image (a file path, a PIL image or an ``[H, W]`` / ``[H, W, 3|4]`` array) goes through the model's own image
processor (``AutoImageProcessor``: resize, crop, normalise) into ``pixel_values``; the units the model attends
over are its leading tokens (``[CLS]``, DeiT's ``[DIST]``, DINOv2's ``[REG0]``...) and the patches of the
processed image, labelled ``p(row,col)`` (:class:`~hf_attn_inspect.capture.grid.PatchGrid`). The batch then runs
through the one capture path (:meth:`AttentionInspector.run <hf_attn_inspect.capture.inspector.AttentionInspector.run>`),
so image attention is captured exactly like text attention.

Architectures whose attention is windowed (Swin) are refused with one line: their attention is not one
``[units, units]`` matrix over the image. This module never imports the inspector (it receives one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..core.errors import CaptureError, InputError
from ..core.images import IMAGE_SUFFIXES, is_image_file, read_image
from .grid import PatchGrid
from .inputs import Batch

# ``inspector`` parameters below are capture.inspector.AttentionInspector (which imports this module, so the
# name is a forward reference only, never imported here)

__all__ = [
    "IMAGE_SUFFIXES",
    "capture_images",
    "default_images",
    "VISION_FAMILIES",
    "WINDOWED_TYPES",
    "encode_images",
    "image_name",
    "is_image_file",
    "is_image_input",
    "lead_units",
    "output_norms",
    "to_pil",
    "vision_family",
    "vision_loader",
]

#: config.model_type of the supported vision transformers -> readable family name.
VISION_FAMILIES = {
    "vit": "ViT",
    "deit": "DeiT",
    "dinov2": "DINOv2",
    "dinov2_with_registers": "DINOv2 with registers",
    "clip_vision_model": "CLIP vision tower",
    "clip": "CLIP (its vision tower)",
}

#: config.model_type of vision transformers whose attention is windowed (refused).
WINDOWED_TYPES = ("swin", "swinv2", "donut-swin", "maskformer-swin")

_SUPPORTED = "ViT, DeiT, DINOv2 (with or without registers) and CLIP's vision tower"


def vision_family(config: Any) -> str | None:
    """The ``model_type`` of a supported vision transformer config, None for a text model. A windowed-attention
    vision model (Swin) or another image model raises :class:`CaptureError` with the reason in one line."""
    kind = getattr(config, "model_type", "")
    if kind in VISION_FAMILIES:
        return kind
    if kind in WINDOWED_TYPES:
        raise CaptureError(
            f"{kind} attends within shifted local windows of the image, not over all patches at once, so its "
            f"attention is no single patch-by-patch map; supported vision models: {_SUPPORTED}"
        )
    if hasattr(config, "num_channels") and hasattr(config, "image_size"):
        raise CaptureError(f"vision architecture '{kind}' is not supported; supported vision models: {_SUPPORTED}")
    return None


def vision_loader(config: Any, default: type) -> tuple[type, Any]:
    """``(auto class, config)`` to load a vision checkpoint with: a whole CLIP checkpoint loads its vision tower
    (``CLIPVisionModel`` with the ``vision_config``); any other takes ``default`` (the task class)."""
    if getattr(config, "model_type", "") == "clip":
        import transformers

        return transformers.CLIPVisionModel, config.vision_config
    return default, config


def lead_units(config: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Labels and kinds of the non-patch units a vision model puts before the patches: ``[CLS]``, then DeiT's
    distillation token ``[DIST]`` or DINOv2's register tokens ``[REG0]``..."""
    kind = getattr(config, "model_type", "")
    labels, kinds = ["[CLS]"], ["class"]
    if kind == "deit":
        labels, kinds = labels + ["[DIST]"], kinds + ["distillation"]
    registers = int(getattr(config, "num_register_tokens", 0) or 0) if kind == "dinov2_with_registers" else 0
    labels += [f"[REG{i}]" for i in range(registers)]
    kinds += ["register"] * registers
    return tuple(labels), tuple(kinds)


def _patch_size(config: Any) -> int:
    p = getattr(config, "patch_size", None)
    p = p[0] if isinstance(p, (tuple, list)) else p
    if not isinstance(p, int) or p < 1:
        raise CaptureError("cannot read patch_size from the vision model's config")
    return p


def _is_one_image(x: object) -> bool:
    if isinstance(x, (np.ndarray, os.PathLike)):
        return True
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with transformers' vision extras
        return False
    return isinstance(x, Image.Image)


def is_image_input(x: object) -> bool:
    """True when ``x`` is an image (PIL image, numpy array, path object) or a non-empty list of them; strings are
    texts (a vision model reads them as file paths)."""
    if isinstance(x, (list, tuple)):
        return bool(x) and all(_is_one_image(i) for i in x)
    return _is_one_image(x)


def image_name(x: object, index: int) -> str:
    """A label for image ``index`` (0-based) of a batch: its file name, else ``image N``."""
    if isinstance(x, (str, os.PathLike)):
        return Path(os.fspath(x)).name
    return f"image {index + 1}"


def to_pil(x: object, index: int = 0, total: int = 1) -> Any:
    """Image ``x`` (a path, a PIL image, or a ``uint8``/``[0, 1]`` float array ``[H, W]``, ``[H, W, 3]`` or
    ``[H, W, 4]``) as an RGB PIL image. A missing or unreadable file, or an array of another shape, raises
    :class:`InputError` in one line."""
    from PIL import Image

    which = "image" if total == 1 else f"image {index + 1} of {total}"
    if isinstance(x, (str, os.PathLike)):
        return read_image(x, which)
    if isinstance(x, Image.Image):
        return x.convert("RGB")
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        a = x
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or min(a.shape[:2]) < 1:
            raise InputError(f"{which}: an image array must be [H, W], [H, W, 3] or [H, W, 4], got shape {list(x.shape)}")
        if a.dtype != np.uint8:
            a = np.asarray(a, dtype=np.float64)
            if not np.isfinite(a).all():
                raise InputError(f"{which}: the image array holds NaN or infinite values")
            a = np.clip(a * 255.0 if a.max(initial=0.0) <= 1.0 else a, 0, 255).round().astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    if isinstance(x, str):
        raise InputError(f"{which}: a vision model reads images, not text; give an image file, a PIL image or an array")
    raise InputError(f"{which}: cannot use a {type(x).__name__} as an image; give a path, a PIL image or an array")


def _display(pixels: torch.Tensor, processor: Any) -> np.ndarray:
    """The processed ``pixel_values [B, 3, H, W]`` back as ``uint8 [B, H, W, 3]`` images (normalisation undone):
    exactly the pixels the model saw, which the views draw the attention over."""
    x = pixels.detach().float().cpu()
    if getattr(processor, "do_normalize", False):
        mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(processor.image_std, dtype=torch.float32).view(1, -1, 1, 1)
        x = x * std + mean
    if not getattr(processor, "do_rescale", True):
        x = x / 255.0
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def encode_images(processor: Any, config: Any, images: Sequence[object], *, first: int = 0) -> Batch:
    """Run ``images`` through ``processor`` into one :class:`Batch` of ``pixel_values`` whose units are the model's
    leading tokens and the patches of the processed image (:class:`PatchGrid` on ``batch.grid``); ``batch.images``
    holds each image as the model saw it (``uint8 [H, W, 3]``, the processor's normalisation undone) and
    ``batch.texts`` their names (an image without a file name is ``image N``, counting from ``first``). Raises :class:`InputError` for an unreadable image."""
    items = list(images)
    if not items:
        raise InputError("no image given")
    pil = [to_pil(x, i, len(items)) for i, x in enumerate(items)]
    try:
        pixels = processor(images=pil, return_tensors="pt")["pixel_values"].float()
    except (ValueError, TypeError, OSError) as exc:
        raise InputError(f"the image processor rejected the image: {str(exc).splitlines()[0][:200]}") from None
    patch = _patch_size(config)
    h, w = pixels.shape[-2:]
    grid = PatchGrid(h // patch, w // patch, patch, *lead_units(config))
    shown = _display(pixels[..., : grid.height, : grid.width], processor)
    batch = Batch.from_units({"pixel_values": pixels}, [grid.labels()] * len(pil), [grid.kinds()] * len(pil),
                             texts=[image_name(x, first + i) for i, x in enumerate(items)])
    batch.grid = grid
    batch.images = list(shown)
    return batch


def capture_images(
    inspector: "AttentionInspector",
    images: object,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    batch_size: int = 8,
    max_memory: int | str | None = None,
    measures: Sequence[str] | None = None,
    request: Any = None,
) -> Any:
    """What ``inspector(images)`` returns for a vision model: one
    :class:`~hf_attn_inspect.capture.result.AttentionResult` for one image (a path, PIL image or array), a list for
    a list of them; ``batch_size`` images per forward pass, each checked against the memory budget first
    (:meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.capture_batch`). Each result's ``tokens`` are the
    unit labels, ``grid`` the patch grid and ``image`` the pixels the model saw. A text model given an image, or a
    vision model given text, raises :class:`InputError`."""
    from ..core.memory import memory_budget
    from .request import CaptureRequest

    if inspector.processor is None:
        inspector.encode_images([])  # raises: an image given to a text model
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    if not items:
        raise InputError("no image given")
    for i, x in enumerate(items):
        if isinstance(x, str) and not is_image_file(x):
            which = "" if len(items) == 1 else f" (item {i + 1} of {len(items)})"
            raise InputError(f"{inspector.name} is a vision model: give it images (a file path, a PIL image or an "
                             f"array), not text{which}")
    if request is not None and (measures is not None or layers is not None or heads is not None):
        raise InputError("pass measures, layers and heads either in request= or as arguments, not both")
    if request is None:
        request = CaptureRequest(measures=measures or (), layers=layers, heads=heads)
    budget = memory_budget(max_memory, inspector.device)
    results = []
    for start in range(0, len(items), max(1, batch_size)):
        batch = inspector.encode_images(items[start : start + batch_size], first=start)
        results.extend(inspector.capture_batch(batch, budget=budget, request=request))
    return results[0] if single else results


def output_norms(inspector: "AttentionInspector", batch: Batch) -> torch.Tensor:
    """``float32 [batch, units]``: the norm of each unit's output (the backbone's ``last_hidden_state``) for an image
    ``batch``, from one forward pass through the capture path that records nothing. High values on background
    patches are Darcet et al.'s artifact tokens (:func:`~hf_attn_inspect.stats.vision.artifact_patches`)."""
    output = inspector.backbone.run(batch, [])
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        raise CaptureError(f"{type(inspector.model).__name__} returned no last_hidden_state to take unit norms from")
    return hidden.detach().float().norm(dim=-1).cpu()


def default_images() -> list[np.ndarray]:
    """Two ``uint8`` RGB test images of different sizes and content (a colour gradient with a bright square, and
    deterministic noise) that ``verify`` and ``debug`` check a vision model on when given none."""
    y, x = np.mgrid[0:48, 0:64]
    ramp = np.stack([x * 4, y * 5, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)
    ramp[12:30, 20:40] = 255
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    return [ramp, noise]
