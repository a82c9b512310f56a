"""The memory budget: how much a call may allocate, parsed sizes, and out-of-memory turned into one line.

Full attention weights cost ``layers x heads x T_q x T_k x 4`` bytes (an 8B Llama at 8k tokens: 275 GB), so
the toolkit estimates what a call would keep before running it and compares the estimate with a budget:

- :func:`memory_budget` -> :class:`MemoryBudget`: by default :data:`DEFAULT_FRACTION` of the memory
  available to this process, the smallest of the cgroup limit minus its usage, the address-space limit
  (``ulimit -v`` / ``RLIMIT_AS``) minus the address space in use, the kernel's ``MemAvailable``, and on
  CUDA the device's free memory; or exactly ``max_memory`` when one is given (``"8GB"``, ``"512MiB"``,
  or a number of bytes, :func:`parse_size`).
- :func:`oom_guard` turns an allocation failure inside its block (``MemoryError``,
  ``torch.OutOfMemoryError``, ``RuntimeError: ... can't allocate memory``) into
  :class:`~hf_attn_inspect.core.errors.MemoryExhaustedError` naming what was being computed.
"""

from __future__ import annotations

import re
import resource
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .errors import InputError, MemoryExhaustedError

if TYPE_CHECKING:  # imported where a device is asked about: parse_size answers without torch
    import torch

__all__ = [
    "DEFAULT_FRACTION",
    "MemoryBudget",
    "MemoryEstimate",
    "memory_budget",
    "available_memory",
    "parse_size",
    "format_bytes",
    "is_out_of_memory",
    "oom_guard",
]

#: Share of the available memory a call may plan to use by default (the rest is headroom for the model's
#: own activations, the allocator and the estimate's error).
DEFAULT_FRACTION = 0.5

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
          "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_size(value: int | float | str) -> int:
    """Bytes of a size given as a number of bytes or a string: ``"8GB"`` (10^9), ``"8GiB"``/``"8G"`` (2^30),
    ``"512MB"``, ``"1.5 GB"``. Raises :class:`InputError` for anything else or a size below 1 byte."""
    if isinstance(value, bool):
        raise InputError(f"memory size must be a number of bytes or a string like '8GB', got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise InputError(f"cannot read memory size '{value}'; write it like 8GB, 512MB, 2GiB or a number of bytes")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _UNITS[unit])
    if size < 1:
        raise InputError(f"memory size must be positive, got '{value}'")
    return size


def format_bytes(n: int | float) -> str:
    """``n`` bytes in decimal units, as ``--max-memory`` reads them: ``'4.61 GB'``, ``'512 MB'``."""
    n = float(n)
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _proc_kb(path: str, field: str) -> int | None:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory(device: torch.device | str | None = None) -> list[tuple[int, str]]:
    """Every limit that applies to this process, as ``(bytes still available, where the number comes from)``.

    Host memory: the cgroup (v2 ``memory.max - memory.current``, or v1), ``RLIMIT_AS`` minus the address
    space in use (``VmSize``), and ``MemAvailable``; on a CUDA ``device`` also the device's free memory
    (``torch.cuda.mem_get_info``). Limits that cannot be read are left out.
    """
    found: list[tuple[int, str]] = []
    root = Path("/sys/fs/cgroup")
    limit, usage = _read_int(root / "memory.max"), _read_int(root / "memory.current")
    if limit is None:
        limit, usage = _read_int(root / "memory/memory.limit_in_bytes"), _read_int(root / "memory/memory.usage_in_bytes")
        if limit is not None and limit >= 1 << 60:
            limit = None
    if limit is not None and usage is not None:
        found.append((max(0, limit - usage), f"cgroup limit {format_bytes(limit)}"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft > 0:
        used = _proc_kb("/proc/self/status", "VmSize") or 0
        found.append((max(0, soft - used), f"address-space limit (ulimit -v) {format_bytes(soft)}"))
    free = _proc_kb("/proc/meminfo", "MemAvailable")
    if free is not None:
        found.append((free, "free RAM"))
    import torch

    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        gpu_free, _ = torch.cuda.mem_get_info(dev)
        found.append((int(gpu_free), f"free memory on {dev}"))
    return found


@dataclass(frozen=True)
class MemoryBudget:
    """How many bytes a call may plan to allocate (``bytes``) and where that number comes from (``source``)."""

    bytes: int
    source: str

    def describe(self) -> str:
        """``'1.2 GB (half of the free RAM)'``: the budget and its origin, for messages."""
        return f"{format_bytes(self.bytes)} ({self.source})"


def memory_budget(
    max_memory: int | float | str | None = None,
    device: torch.device | str | None = None,
    *,
    fraction: float = DEFAULT_FRACTION,
) -> MemoryBudget:
    """The budget of one call: ``max_memory`` when given (bytes or ``"8GB"``), else ``fraction`` of the
    smallest limit of :func:`available_memory` (or of 16 GB when no limit can be read)."""
    if max_memory is not None:
        return MemoryBudget(parse_size(max_memory), "max_memory")
    limits = available_memory(device)
    if not limits:
        return MemoryBudget(int(fraction * 16e9), f"{fraction:.0%} of an assumed 16 GB")
    free, source = min(limits)
    return MemoryBudget(int(fraction * free), f"{fraction:.0%} of the available memory, {source}")


_OOM_TEXT = ("can't allocate memory", "out of memory", "cannot allocate memory", "failed to allocate")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure: ``MemoryError``, ``torch.OutOfMemoryError`` or a ``RuntimeError``
    whose message says memory could not be allocated (CPU allocator, CUDA, MPS)."""
    if isinstance(exc, MemoryExhaustedError):
        return False
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXT)


@contextmanager
def oom_guard(what: str, hint: str = "") -> Iterator[None]:
    """Within the block, an allocation failure becomes :class:`MemoryExhaustedError`
    ``'out of memory while <what>: <allocator's first line>; <hint>'`` (one line, no traceback chained)."""
    message = None
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - only allocation failures are translated, the rest re-raised
        if not is_out_of_memory(exc):
            raise
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = re.sub(r"\s+", " ", reason)[:200].rstrip(". ")
        tail = f"; {hint}" if hint else ""
        message = f"out of memory while {what}: {reason or type(exc).__name__}{tail}"
    if message is not None:  # raised outside the except clause: the failed frames (and their tensors) are freed
        raise MemoryExhaustedError(message) from None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a call is expected to need: ``kept`` (what it returns or holds to the end: weights, pooled
    matrices, statistics) and ``transient`` (the largest working buffers alive at once: one layer's scores
    and weights, masks, activations, logits). ``detail`` says what ``kept`` is made of, for messages."""

    kept: int
    transient: int
    detail: str = ""

    @property
    def total(self) -> int:
        """``kept + transient``: the number compared with the budget."""
        return self.kept + self.transient

    def describe(self) -> str:
        """``'4.61 GB (4.6 GB of weights: ..., plus 12 MB while computing)'``."""
        what = f" of {self.detail}" if self.detail else " kept"
        return f"{format_bytes(self.total)} ({format_bytes(self.kept)}{what}, plus {format_bytes(self.transient)} while computing)"
