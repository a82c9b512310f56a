"""The capture planner: per-layer modes within the memory budget, the same numbers as the full capture and the
streaming statistics, and one tokenization of the text per command."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from hf_attn_inspect.capture.inspector import AttentionInspector
from hf_attn_inspect.capture.pooled import block_edges, pool_blocks
from hf_attn_inspect.cli import main
from hf_attn_inspect.core.memory import memory_budget
from hf_attn_inspect.runs.captured import ExplorerCapture, LongCapture
from hf_attn_inspect.runs.planner import plan_capture, run_plan
from hf_attn_inspect.stats.metrics import METRICS
from hf_attn_inspect.stats.patterns import head_table
from hf_attn_inspect.stats.streaming import streaming_head_metrics

WORDS = "the cat sat on a mat , and dog ran to park with big red ball in sun .".split()
TEXT = " ".join(random.Random(3).choice(WORDS) for _ in range(300))  # 302 tokens: full weights ~80 MB


@pytest.fixture(scope="module")
def full(inspector):
    """The reference: every layer's full weights (no budget given: they fit half the machine's memory)."""
    return inspector(TEXT)


def test_plan_fits_keeps_everything_full_on_the_same_batch(inspector, full):
    batch = inspector.encode([TEXT])
    plan = plan_capture(inspector, batch, layer=0, head=0, max_memory="1GB")
    assert not plan.pooled and set(plan.modes.values()) == {"full"} and len(plan.modes) == 6
    assert plan.estimate.total == plan.full_estimate.total == inspector.batch_estimate(batch).total
    result = run_plan(inspector, plan)
    assert torch.equal(result.attentions, full.attentions) and result.tokens == full.tokens
    view = plan_capture(inspector, batch, layers=[4, 1], max_memory="1GB")
    assert view.modes == {("self", 1): "full", ("self", 4): "full"} and view.describe().startswith("self: full layers 1, 4;")
    assert torch.equal(run_plan(inspector, view).attentions, full.attentions[[1, 4]])


def test_long_input_small_budget_pools_layers_that_do_not_fit(inspector, full):
    """60 MB: the full capture (~80 MB) does not fit; inspect's plan pools every layer, view's keeps the asked
    layer full and pools the rest; the numbers equal the full capture and the streaming statistics."""
    batch = inspector.encode([TEXT])
    budget = memory_budget("60MB")
    plan = plan_capture(inspector, batch, layer=2, head=3, budget=budget, max_blocks=64)
    assert plan.full_estimate.total > budget.bytes >= plan.estimate.total
    assert plan.pooled and plan.modes == {("self", i): "pooled" for i in range(6)}
    assert plan.layers_in("pooled") == list(range(6)) and plan.layers_in("full") == []
    assert "self: pooled layers 0, 1, 2, 3, 4, 5" in plan.describe() and "60 MB (max_memory)" in plan.describe()
    cap = run_plan(inspector, plan)
    assert isinstance(cap, LongCapture) and cap.plan is plan and cap.kept() == plan.kept()
    q_edges = block_edges(302, 64)
    assert torch.equal(cap.q_edges, q_edges) and cap.pooled.shape == (6, 12, len(q_edges) - 1, len(q_edges) - 1)
    starts = q_edges[:-1].numpy()  # block sums of the full weights by numpy, independent of the capture
    want = np.add.reduceat(np.add.reduceat(full.attentions.double().numpy(), starts, axis=-2), starts, axis=-1)
    np.testing.assert_allclose(cap.pooled.numpy(), want, atol=1e-5, rtol=1e-5)  # float32 weights, 25-cell sums
    streamed = streaming_head_metrics(inspector, TEXT)
    np.testing.assert_allclose(cap.table[list(METRICS)].to_numpy(), streamed[list(METRICS)].to_numpy(), atol=2e-5,
                               rtol=1e-5)
    assert list(cap.table["class"]) == list(head_table(full)["class"])
    assert plan.full_heads == {("self", 2): list(range(12))}  # the drawn layer fits next to the pooled rest
    torch.testing.assert_close(cap.layer_weights, full.layer(2), atol=1e-5, rtol=1e-5)
    assert "self: pooled layers 0, 1, 2, 3, 4, 5, 12 of 12 heads of layer 2 also full;" in plan.describe()

    view = plan_capture(inspector, batch, layers=[2], budget=budget)
    assert view.modes == {("self", i): ("full" if i == 2 else "pooled") for i in range(6)}
    assert view.full_heads == {("self", 2): list(range(12))} and not view.notes
    page = run_plan(inspector, view)
    assert isinstance(page, ExplorerCapture) and page.full_layers == [2] and page.result.layer_ids == [2]
    torch.testing.assert_close(page.result.layer(2), full.layer(2), atol=1e-5, rtol=1e-5)
    ps = page.pooled["self"]
    assert ps.layer_ids == [0, 1, 3, 4, 5]
    np.testing.assert_allclose(ps.sums.numpy(), pool_blocks(full.attentions[[0, 1, 3, 4, 5]], ps.q_edges, ps.k_edges).numpy(),
                               atol=1e-5, rtol=1e-5)
    assert "full weights of layer 2" in page.kept()


def _count_tokenization(monkeypatch) -> dict[str, int]:
    """Count :meth:`AttentionInspector.encode` calls and the tokenizer calls made anywhere."""
    from transformers import PreTrainedTokenizerBase

    counts = {"encode": 0, "tokenizer": 0}
    real_encode, real_call = AttentionInspector.encode, PreTrainedTokenizerBase.__call__

    def encode(self, *args, **kwargs):
        counts["encode"] += 1
        return real_encode(self, *args, **kwargs)

    def call(self, *args, **kwargs):
        counts["tokenizer"] += 1
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(AttentionInspector, "encode", encode)
    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", call)
    return counts


@pytest.mark.parametrize("argv", [
    ["inspect", "The cat sat on the mat."],                 # full weights fit: the normal path
    ["inspect", TEXT, "--max-memory", "60MB"],              # pooled path
])
def test_inspect_tokenizes_the_text_once(inspector, tmp_path, monkeypatch, capsys, argv):
    counts = _count_tokenization(monkeypatch)
    inspector.encode([argv[1]])
    one = dict(counts)  # what one tokenization of this text costs (the tokenizer runs twice: lengths, batch)
    assert one["encode"] == 1 and one["tokenizer"] >= 1
    assert main(argv + ["--out", str(tmp_path / "o")]) == 0
    assert "long input" in capsys.readouterr().out or argv[1] != TEXT
    assert counts["encode"] - one["encode"] == 1
    assert counts["tokenizer"] - one["tokenizer"] == one["tokenizer"]
