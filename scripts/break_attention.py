"""Break the embedded model's attention in five ways and show which check of the checklist catches each.

    PYTHONPATH=. python scripts/break_attention.py [--details]

For the healthy model and each planted fault (see :mod:`hf_attn_inspect.checks.faults`: scale removed,
queries zeroed, scores blown up, a fully masked row, the mask dropped) it runs
:func:`hf_attn_inspect.checks.diagnose.diagnose` and prints one status per check, then the finding of the check
that catches each fault. Exit code 0 when the healthy model passes every check and every fault fails
its own check, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hf_attn_inspect import AttentionInspector  # noqa: E402
from hf_attn_inspect.checks.faults import FAULTS, all_caught, break_and_diagnose, caught_table  # noqa: E402


def report_text(reports: dict, details: bool = False) -> str:
    """The table of statuses and, per fault, the finding that catches it (or every finding with ``details``)."""
    parts = [caught_table(reports)]
    for name, report in reports.items():
        if name in FAULTS:
            parts.append(f"\n{name}: {FAULTS[name].description}")
            parts.append(report.format() if details else report[FAULTS[name].check].format())
    if details:
        parts.append("\n" + reports["healthy"].format())
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--details", action="store_true", help="print every finding with its numbers, causes and fix")
    args = parser.parse_args(argv)
    reports = break_and_diagnose(AttentionInspector.from_pretrained(device="cpu"))
    print(report_text(reports, args.details))
    return 0 if all_caught(reports) else 1


if __name__ == "__main__":
    sys.exit(main())
