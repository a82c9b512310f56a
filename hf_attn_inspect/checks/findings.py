"""What a check returns: a :class:`Finding` per check and the :class:`Report` of a whole checklist.

A finding names its check, a status (``ok``, ``warn`` or ``fail``), the numbers that justify it, the
likely causes and the fix to try. Nothing is printed unless asked (:meth:`Finding.print`,
:meth:`Report.print`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import pandas as pd

from ..core.errors import InputError

__all__ = ["STATUSES", "Finding", "Report", "UnknownCheckError"]

#: The statuses of a finding, from best to worst.
STATUSES = ("ok", "warn", "fail")
_MARKS = {"ok": "[ok]  ", "warn": "[warn]", "fail": "[FAIL]"}


class UnknownCheckError(InputError):
    """A report was asked for a check it does not hold (the message names the checks it does hold)."""


@dataclass
class Finding:
    """The result of one check: ``status`` is ``ok``, ``warn`` or ``fail``; ``numbers`` justify it;
    ``causes`` are the likely reasons when it is not ok and ``fix`` what to try. A status outside
    :data:`STATUSES` raises :class:`~hf_attn_inspect.core.errors.InputError`."""

    check: str
    status: str
    summary: str
    numbers: dict[str, Any] = field(default_factory=dict)
    causes: list[str] = field(default_factory=list)
    fix: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise InputError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        """True unless the check failed (a warning passes)."""
        return self.status != "fail"

    def format(self, details: bool = True) -> str:
        """One line with the mark, the check and its summary; with ``details``, numbers, causes and fix."""
        lines = [f"{_MARKS[self.status]} {self.check}: {self.summary}"]
        if details:
            if self.numbers:
                nums = ", ".join(f"{k}={_fmt(v)}" for k, v in self.numbers.items())
                lines.append(f"         numbers: {nums}")
            if self.status != "ok":
                for cause in self.causes:
                    lines.append(f"         cause: {cause}")
                if self.fix:
                    lines.append(f"         fix: {self.fix}")
        return "\n".join(lines)

    def print(self, file: TextIO | None = None) -> None:
        """Print :meth:`format` (to stdout by default)."""
        print(self.format(), file=file or sys.stdout)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return "[" + ", ".join(map(str, v[:8])) + f", ... {len(v) - 8} more]"
    return str(v)


@dataclass
class Report:
    """The checklist's findings for one model; ``status`` is the worst of them, ``exit_code`` 0 or 1.

    ``report["padding_leak"]`` is the finding of that check; an unknown check raises
    :class:`UnknownCheckError` naming the checks the report holds.
    """

    model: str
    findings: list[Finding]
    texts: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The worst status of any finding (``ok`` for an empty report)."""
        return max((f.status for f in self.findings), key=STATUSES.index, default="ok")

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return self.status != "fail"

    @property
    def exit_code(self) -> int:
        """0 when healthy (warnings allowed), 1 when a check fails (the ``debug`` command's exit code)."""
        return 0 if self.ok else 1

    @property
    def failed(self) -> list[str]:
        """The names of the checks that failed, in checklist order."""
        return [f.check for f in self.findings if f.status == "fail"]

    def __getitem__(self, check: str) -> Finding:
        for f in self.findings:
            if f.check == check:
                return f
        raise UnknownCheckError(f"no check '{check}'; checks: {', '.join(f.check for f in self.findings)}")

    def to_frame(self) -> pd.DataFrame:
        """One row per check: ``check``, ``status``, ``summary``, ``fix``."""
        return pd.DataFrame([{"check": f.check, "status": f.status, "summary": f.summary, "fix": f.fix} for f in self.findings])

    def format(self, details: bool = True) -> str:
        """A header, one :meth:`Finding.format` per check and a verdict line (healthy / with warnings / BROKEN)."""
        head = f"Attention checklist for {self.model} ({len(self.texts)} texts)"
        body = [f.format(details) for f in self.findings]
        verdict = {"ok": "healthy", "warn": "healthy, with warnings", "fail": "BROKEN: " + ", ".join(self.failed)}[self.status]
        return "\n".join([head, "-" * len(head), *body, "-" * len(head), f"result: {verdict}"])

    def print(self, file: TextIO | None = None, details: bool = True) -> None:
        """Print :meth:`format` (to stdout by default)."""
        print(self.format(details), file=file or sys.stdout)
