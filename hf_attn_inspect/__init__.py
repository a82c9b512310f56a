"""hf-attn-inspect: see and debug the attention of any Hugging Face transformer, exactly."""

from .core.kernels import scaled_dot_product_attention_with_weights
from .core.errors import AttnInspectError, CaptureError, DistributedError, InputError, ModelLoadError, OutputError
from .capture.inspector import AttentionInspector, TruncationWarning, default_model_path
from .capture.result import AttentionResult

__version__ = "0.1.0"

# Imported on first use (they pull in matplotlib / transformers' Trainer machinery).
_LAZY = {
    "AttentionMonitor": "runs.monitor",
    "AttentionStatsCallback": "runs.monitor",
    "plot_training_trends": "views.training",
    "animate_attention": "views.training",
    "compare_models": "runs.compare",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AttentionInspector",
    "AttentionMonitor",
    "AttentionStatsCallback",
    "animate_attention",
    "compare_models",
    "plot_training_trends",
    "AttentionResult",
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
