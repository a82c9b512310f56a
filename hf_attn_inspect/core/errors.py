"""The small exception hierarchy of hf-attn-inspect.

Every error the toolkit raises on purpose derives from :class:`AttnInspectError`; its message is one
line that says what was wrong and what to do next. The command line turns any of them into
``error: <message>`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations


class AttnInspectError(Exception):
    """Base class of every deliberate hf-attn-inspect error (one-line, actionable message)."""


class InputError(AttnInspectError, ValueError):
    """The text, index, option or file the caller gave is not usable (empty text, layer out of range...)."""


class ModelLoadError(AttnInspectError):
    """A model or tokenizer could not be loaded (unknown name, no network, broken directory)."""


class CaptureError(AttnInspectError):
    """The model ran but its attention could not be captured (unsupported architecture)."""


class OutputError(AttnInspectError, OSError):
    """A result could not be written (directory not writable, existing run not to be overwritten)."""


__all__ = ["AttnInspectError", "InputError", "ModelLoadError", "CaptureError", "OutputError"]
