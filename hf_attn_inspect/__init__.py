"""hf-attn-inspect: see and debug the attention of any Hugging Face transformer, exactly."""

from .core import scaled_dot_product_attention_with_weights
from .errors import AttnInspectError, CaptureError, InputError, ModelLoadError, OutputError
from .inspector import AttentionInspector, TruncationWarning, default_model_path
from .result import AttentionResult

__version__ = "0.1.0"

__all__ = [
    "AttentionInspector",
    "AttentionResult",
    "AttnInspectError",
    "CaptureError",
    "InputError",
    "ModelLoadError",
    "OutputError",
    "TruncationWarning",
    "default_model_path",
    "scaled_dot_product_attention_with_weights",
]
