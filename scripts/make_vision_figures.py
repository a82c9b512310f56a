"""Draw the image views of docs/guides/vision.md over matplotlib's grace_hopper.jpg into docs/images/.

No pretrained vision model is reachable offline, so the figures come from a small randomly initialised ViT
(224 x 224 pixels, 16-pixel patches: a 14 x 14 grid, 4 layers x 4 heads, weights drawn wider than usual so
that its attention is not nearly uniform) saved with its image processor; a
trained checkpoint (``--model google/vit-base-patch16-224`` for users with the Hub) draws the same figures.

    python scripts/make_vision_figures.py [--model DIR_OR_HUB_NAME] [--out docs/images]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.cbook as cbook  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402


def tiny_vit(directory: Path) -> Path:
    """Save a small random ViT (224 px, patch 16, 4 layers x 4 heads) and its processor to ``directory``."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.ViTConfig(image_size=224, patch_size=16, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=128, initializer_range=0.2)  # wider weights: sharper random attention
    tf.ViTModel(cfg).save_pretrained(directory)
    tf.ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default="docs/images")
    args = parser.parse_args()
    from hf_attn_inspect import AttentionInspector
    from hf_attn_inspect.views.plotting import save_figure
    from hf_attn_inspect.views.vision import (
        plot_attention_distance, plot_cls_attention_heads, plot_image_rollout, plot_patch_query,
    )

    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_vit(Path(tmp))
        inspector = AttentionInspector.from_pretrained(model, device="cpu")
        result = inspector(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    save_figure(plot_cls_attention_heads(result, top_mass=None), out / "vision_cls_heads.png", dpi=60)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    plot_image_rollout(result, "mean", 0.0, ax=axes[0])
    plot_image_rollout(result, "max", 0.9, ax=axes[1])
    plot_patch_query(result, 5, 7, layer=0, head=1, ax=axes[2])
    fig.tight_layout()
    save_figure(fig, out / "vision_rollout_query.png", dpi=60)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    plot_attention_distance(result, ax=ax)
    save_figure(fig, out / "vision_distance.png", dpi=60)
    print(f"wrote {out}/vision_cls_heads.png, vision_rollout_query.png, vision_distance.png")


if __name__ == "__main__":
    main()
