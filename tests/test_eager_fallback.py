"""Edits on a model that does not dispatch through transformers' attention interface (eager fallback)."""

import pytest

from hf_attn_inspect import AttentionInspector
from hf_attn_inspect.capture.ablation import ablate
from hf_attn_inspect.core.errors import CaptureError


def test_ablate_block_on_the_eager_fallback_is_refused(tiny_model, tiny_tokenizer):
    """DeBERTa falls back to eager output_attentions, where no head can be removed: an inspector call inside
    ``ablate(...)`` raises instead of returning the intact model's weights as if they were ablated."""
    inspector = AttentionInspector(tiny_model("deberta"), tiny_tokenizer)
    inspector("hello world there")  # the fallback itself works
    with pytest.raises(CaptureError, match="cannot be ablated"):
        with ablate(inspector, "0.0,0.1"):
            inspector("hello world there")
