"""hf-attn-inspect: see and debug the attention of any Hugging Face transformer, exactly.

Every public name is imported on first use (PEP 562 ``__getattr__``): ``import hf_attn_inspect`` and the
command line's ``--help`` and input checks do not import torch or transformers; ``from hf_attn_inspect
import AttentionInspector`` imports what that name needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module (relative to this package) that defines it
_LAZY = {
    "scaled_dot_product_attention_with_weights": "core.kernels",
    "AttnInspectError": "core.errors",
    "CaptureError": "core.errors",
    "InputError": "core.errors",
    "ModelLoadError": "core.errors",
    "OutputError": "core.errors",
    "DistributedError": "core.errors",
    "MemoryBudgetError": "core.errors",
    "AttentionInspector": "capture.inspector",
    "TruncationWarning": "capture.inspector",
    "default_model_path": "capture.inspector",
    "AttentionResult": "capture.result",
    "GenerationResult": "capture.result",
    "AttentionMonitor": "runs.monitor",
    "AttentionStatsCallback": "runs.monitor",
    "plot_training_trends": "views.training",
    "animate_attention": "views.training",
    "compare_models": "runs.compare",
    "analyze_dataset": "runs.dataset",
    "DataSpec": "runs.data",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from .capture.inspector import AttentionInspector, TruncationWarning, default_model_path
    from .capture.result import AttentionResult, GenerationResult
    from .core.errors import (
        AttnInspectError, CaptureError, DistributedError, InputError, MemoryBudgetError, ModelLoadError, OutputError,
    )
    from .core.kernels import scaled_dot_product_attention_with_weights
    from .runs.compare import compare_models
    from .runs.data import DataSpec
    from .runs.dataset import analyze_dataset
    from .runs.monitor import AttentionMonitor, AttentionStatsCallback
    from .views.training import animate_attention, plot_training_trends


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AttentionInspector",
    "AttentionMonitor",
    "AttentionStatsCallback",
    "animate_attention",
    "analyze_dataset",
    "compare_models",
    "DataSpec",
    "plot_training_trends",
    "AttentionResult",
    "GenerationResult",
    "AttnInspectError",
    "CaptureError",
    "DistributedError",
    "InputError",
    "ModelLoadError",
    "OutputError",
    "TruncationWarning",
    "default_model_path",
    "scaled_dot_product_attention_with_weights",
]
