"""The small exception hierarchy of hf-attn-inspect.

Every error the toolkit raises on purpose derives from :class:`AttnInspectError`; its message is one
line that says what was wrong and what to do next. The command line turns any of them into
``error: <message>`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations


class AttnInspectError(Exception):
    """Base class of every deliberate hf-attn-inspect error (one-line, actionable message).

    ``relayed`` is True on the other processes of a distributed run when the error is the main
    process's (which reports it), so the command line prints it once, not once per process.
    """

    relayed: bool = False


class InputError(AttnInspectError, ValueError):
    """The text, index, option or file the caller gave is not usable (empty text, layer out of range...)."""


class ModelLoadError(AttnInspectError):
    """A model or tokenizer could not be loaded (unknown name, no network, broken directory)."""


class CaptureError(AttnInspectError):
    """The model ran but its attention could not be captured (unsupported architecture)."""


class OutputError(AttnInspectError, OSError):
    """A result could not be written (directory not writable, existing run not to be overwritten)."""


class DistributedError(AttnInspectError):
    """A process of a run launched on several processes failed, died or stopped answering; the finished
    shards stay in the output folder and ``--resume`` finishes the run with any number of processes."""


class MemoryBudgetError(AttnInspectError):
    """What a call would keep does not fit the memory budget; refused before anything big is allocated.

    ``estimate`` and ``budget`` are in bytes; the message names both and the ways out (keep fewer layers or
    heads, raise the budget, or compute statistics without ``[T, T]`` memory).
    """

    def __init__(self, message: str, *, estimate: int = 0, budget: int = 0) -> None:
        super().__init__(message)
        self.estimate = int(estimate)
        self.budget = int(budget)


class MemoryExhaustedError(MemoryBudgetError):
    """An allocation failed while a run was computing something (the estimate was wrong, or another
    process took the memory); the message names what was being computed."""


__all__ = [
    "AttnInspectError",
    "InputError",
    "ModelLoadError",
    "CaptureError",
    "OutputError",
    "DistributedError",
    "MemoryBudgetError",
    "MemoryExhaustedError",
]
