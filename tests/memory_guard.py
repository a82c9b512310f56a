"""Records the largest tensor any torch operation creates (every op, through a TorchDispatchMode).

Used to prove that the streaming path never creates a ``[T, T]`` tensor: every aten operation's outputs
(factory functions, matmuls, masks, sdpa kernels) pass through :class:`MaxTensorTracker`. Run as a script
it executes the ``long`` command under the tracker and prints one JSON line with the largest tensor's
element count and operation, and the process's own peak resident memory (``VmHWM``, :func:`peak_rss_kb`).
"""

from __future__ import annotations

import json
import resource
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class MaxTensorTracker(TorchDispatchMode):
    """Keeps ``max_numel`` and ``max_op`` over every tensor produced while active."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0
        self.max_op = ""
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > self.max_numel:
                self.max_numel = t.numel()
                self.max_op = str(func)
        return out


def peak_rss_kb() -> int:
    """This process's own peak resident memory in KiB: ``VmHWM`` of ``/proc/self/status``. Not ``ru_maxrss``:
    Linux carries the parent's peak across fork and exec into it, so a command started from a pytest worker
    that had loaded 1.4 GB reported 1.4 GB however little the command itself used."""
    try:
        with open("/proc/self/status") as fh:
            status = dict(line.split(":", 1) for line in fh if ":" in line)
        return int(status["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):  # no procfs: the rusage figure, an upper bound
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str]) -> int:
    from hf_attn_inspect.cli import main as cli_main

    tracker = MaxTensorTracker()
    with tracker:
        rc = cli_main(argv)
    print(json.dumps({"rc": rc, "max_numel": tracker.max_numel, "max_op": tracker.max_op, "ops": tracker.ops,
                      "maxrss_kb": peak_rss_kb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
