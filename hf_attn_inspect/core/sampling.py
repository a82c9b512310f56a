"""The values a generation accepts, checked without torch (the ``generate`` command checks them before loading)."""

from __future__ import annotations

from .errors import InputError

__all__ = ["check_generation_values"]


def check_generation_values(
    max_new_tokens: int,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    alternatives: int = 5,
    *,
    flags: bool = False,
) -> None:
    """Raise :class:`InputError` for a value ``generate`` cannot use: ``max_new_tokens`` and ``top_k`` at least 1,
    ``temperature`` above 0, ``top_p`` in (0, 1], ``alternatives`` at least 0 (None: not given). ``flags`` names
    them as command-line flags (``--top-p``) instead of arguments (``top_p``)."""
    def name(arg: str) -> str:
        return "--" + arg.replace("_", "-") if flags else arg

    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"{name('max_new_tokens')} must be at least 1, got {max_new_tokens}")
    if temperature is not None and not temperature > 0:
        raise InputError(f"{name('temperature')} must be above 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"{name('top_p')} must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise InputError(f"{name('top_k')} must be at least 1, got {top_k}")
    if alternatives < 0:
        raise InputError(f"{name('alternatives')} must be at least 0, got {alternatives}")
