"""Tiny random vision transformers with their image processors, built from configs and saved offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

#: The families of issue 22: config.model_type -> number of leading (non-patch) units of the tiny model.
VISION_FAMILIES = {"vit": 1, "deit": 2, "dinov2_with_registers": 3, "clip_vision_model": 1}
SIZE, PATCH = 32, 8
_COMMON = {"image_size": SIZE, "patch_size": PATCH, "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 64}


def build_vision(family: str, seed: int = 0):
    """``(model, image processor)`` of a tiny random ``family`` vision transformer (float32, eval, CPU)."""
    import transformers as tf

    torch.manual_seed(seed)
    square = {"height": SIZE, "width": SIZE}
    if family == "vit":
        model = tf.ViTForImageClassification(tf.ViTConfig(**_COMMON, num_labels=3))
        proc = tf.ViTImageProcessor(size=square)
    elif family == "deit":
        model = tf.DeiTModel(tf.DeiTConfig(**_COMMON))
        proc = tf.ViTImageProcessor(size=square)
    elif family == "dinov2_with_registers":
        model = tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(**_COMMON, num_register_tokens=2))
        proc = tf.BitImageProcessor(size={"shortest_edge": SIZE}, crop_size=square)
    elif family == "clip_vision_model":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**_COMMON))
        proc = tf.CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size=square)
    elif family == "swin":
        model = tf.SwinModel(tf.SwinConfig(image_size=SIZE, patch_size=4, embed_dim=16, depths=[1, 1],
                                           num_heads=[2, 2], window_size=4))
        proc = tf.ViTImageProcessor(size=square)
    else:
        raise ValueError(family)
    return model.eval(), proc


def save_vision(family: str, directory: Path, seed: int = 0) -> Path:
    """Save a tiny ``family`` model (weights drawn with ``seed``) and its image processor to ``directory``."""
    import warnings

    model, proc = build_vision(family, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(directory)
        proc.save_pretrained(directory)
    return Path(directory)


def synthetic_image(height: int = 40, width: int = 48, seed: int = 0) -> np.ndarray:
    """A ``uint8 [H, W, 3]`` image: smooth colour gradients plus a bright square (deterministic)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    img[height // 4 : height // 2, width // 4 : width // 2] = 255
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
