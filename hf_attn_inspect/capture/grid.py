"""`PatchGrid`: how a vision transformer's units map onto the image it saw.

A ViT-style model cuts its input image (``pixel_values``, ``height x width`` pixels after the image processor's
resize and crop) into a ``rows x cols`` grid of ``patch x patch`` pixel squares, read row by row, and puts a few
non-patch units in front: the class token ``[CLS]``, DeiT's distillation token ``[DIST]`` and DINOv2's register
tokens ``[REG0]``... The grid is the single place that knows where unit ``i`` sits in the image: its label
(``p(row,col)``), its kind (a name of :data:`~hf_attn_inspect.capture.inputs.UNIT_KINDS`) and its pixel box.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..core.errors import InputError

__all__ = ["PatchGrid", "patch_label"]


def patch_label(row: int, col: int) -> str:
    """The unit label of the patch at grid position ``(row, col)``: ``p(row,col)``."""
    return f"p({row},{col})"


@dataclass(frozen=True)
class PatchGrid:
    """The units of one image: ``lead_labels``/``lead_kinds`` (the non-patch units in front, in model order) and
    a ``rows x cols`` grid of ``patch``-pixel squares, row-major, covering the model's input image of
    ``rows * patch`` x ``cols * patch`` pixels."""

    rows: int
    cols: int
    patch: int
    lead_labels: tuple[str, ...] = ("[CLS]",)
    lead_kinds: tuple[str, ...] = ("class",)

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1 or self.patch < 1:
            raise InputError(f"a patch grid needs positive rows, cols and patch size, got {self.rows}, {self.cols}, {self.patch}")
        if len(self.lead_labels) != len(self.lead_kinds):
            raise InputError("a patch grid needs one kind per leading unit")

    # ------------------------------------------------------------------ sizes
    @property
    def lead(self) -> int:
        """Number of non-patch units before the patches."""
        return len(self.lead_labels)

    @property
    def n_patches(self) -> int:
        """``rows * cols``."""
        return self.rows * self.cols

    @property
    def n_units(self) -> int:
        """Every unit the model attends over: the leading units and the patches."""
        return self.lead + self.n_patches

    @property
    def height(self) -> int:
        """Height in pixels of the model's input image (``rows * patch``)."""
        return self.rows * self.patch

    @property
    def width(self) -> int:
        """Width in pixels of the model's input image (``cols * patch``)."""
        return self.cols * self.patch

    @property
    def patches(self) -> slice:
        """The unit positions of the patches (``lead .. lead + rows*cols``)."""
        return slice(self.lead, self.n_units)

    # ------------------------------------------------------------------ units
    def labels(self) -> list[str]:
        """Every unit's label in model order: the leading units, then ``p(row,col)`` row by row."""
        return list(self.lead_labels) + [patch_label(r, c) for r in range(self.rows) for c in range(self.cols)]

    def kinds(self) -> list[str]:
        """Every unit's kind name in model order (``class``, ``distillation``, ``register``, then ``patch``)."""
        return list(self.lead_kinds) + ["patch"] * self.n_patches

    def unit(self, row: int, col: int) -> int:
        """The unit position of the patch at ``(row, col)``; raises :class:`InputError` outside the grid."""
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise InputError(f"patch ({row},{col}) is outside the {self.rows} x {self.cols} grid")
        return self.lead + row * self.cols + col

    def boxes(self) -> np.ndarray:
        """``int64 [rows*cols, 4]``: each patch's pixel box ``(x0, y0, x1, y1)`` in the model's input image
        (``x`` columns, ``y`` rows, end exclusive), in unit order."""
        r, c = np.divmod(np.arange(self.n_patches), self.cols)
        p = self.patch
        return np.stack([c * p, r * p, (c + 1) * p, (r + 1) * p], axis=1).astype(np.int64)

    def centers(self) -> np.ndarray:
        """``float64 [rows*cols, 2]``: each patch's centre ``(x, y)`` in pixels, in unit order."""
        b = self.boxes()
        return np.stack([(b[:, 0] + b[:, 2]) / 2.0, (b[:, 1] + b[:, 3]) / 2.0], axis=1)

    def to_map(self, values: np.ndarray) -> np.ndarray:
        """Per-patch values (``[..., rows*cols]``, unit order) as a ``[..., rows, cols]`` map."""
        values = np.asarray(values)
        if values.shape[-1] != self.n_patches:
            raise InputError(f"expected {self.n_patches} patch values, got {values.shape[-1]}")
        return values.reshape(*values.shape[:-1], self.rows, self.cols)

    # ------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (:meth:`from_dict` reads it back)."""
        d = asdict(self)
        d["lead_labels"], d["lead_kinds"] = list(self.lead_labels), list(self.lead_kinds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PatchGrid":
        """The grid :meth:`to_dict` wrote."""
        return cls(int(d["rows"]), int(d["cols"]), int(d["patch"]), tuple(d["lead_labels"]), tuple(d["lead_kinds"]))
