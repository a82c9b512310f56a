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


def test_streaming_metrics_on_the_eager_fallback_respect_causal_models(tiny_model, tiny_tokenizer, monkeypatch):
    """The statistics recorder with ``reduce=True`` on the eager fallback: a causal model's row ``i`` sees
    ``i + 1`` keys, so its maximum entropy is the mean of ``ln(i + 1)`` (not ``ln T``) and every metric equals
    the one measured through the attention interface."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    import torch

    import hf_attn_inspect.capture.inspector as inspector_module
    from hf_attn_inspect.stats.metrics import METRICS
    from hf_attn_inspect.stats.streaming import StreamingStatsRecorder

    inspector = AttentionInspector(tiny_model("gpt2"), tiny_tokenizer)
    batch = inspector.encode(["the cat sat on the mat today"])
    t = int(batch.inputs["attention_mask"].sum())
    direct = StreamingStatsRecorder(batch.stack_masks(), reduce=True)
    inspector.run(batch, direct)

    @contextmanager
    def no_dispatch(*args, **kwargs):  # as for a model that does not call the attention interface
        yield SimpleNamespace(calls=0, causal_stacks=set(), edits=(), site=None)

    monkeypatch.setattr(inspector_module, "capture", no_dispatch)
    fallback = StreamingStatsRecorder(batch.stack_masks(), reduce=True)
    inspector.run(batch, fallback)
    assert batch.causal_stacks == {"self"} and fallback.causal == {"self": True}
    expected = float(torch.log(torch.arange(1, t + 1, dtype=torch.float64)).mean())
    for layer in (0, 1):
        got, ref = fallback.metrics["self"][layer], direct.metrics["self"][layer]
        torch.testing.assert_close(got["max_entropy"], torch.full_like(got["max_entropy"], expected))
        for name in METRICS:
            torch.testing.assert_close(got[name], ref[name], atol=2e-5, rtol=1e-4, msg=name)
