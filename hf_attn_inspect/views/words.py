"""Numbers in words for what the toolkit prints and writes: ``1 sentence``, ``1,000 sentences``."""

from __future__ import annotations

__all__ = ["counted"]


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` with thousands separators and ``noun`` in the singular for exactly 1, else ``plural``
    (default ``noun + "s"``): ``counted(1, "sentence") == "1 sentence"``, ``counted(4271, "token") ==
    "4,271 tokens"``."""
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"
