"""Training monitor: AttentionMonitor, the Trainer callback, trend plots and attention animations."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models
from conftest import SENTENCES
from hf_attn_inspect import AttentionInspector, AttentionMonitor, AttentionStatsCallback, InputError
from hf_attn_inspect import animate_attention, plot_training_trends
from hf_attn_inspect.stats.tables import head_metrics
from hf_attn_inspect.stats.metrics import METRICS
from hf_attn_inspect.runs.monitor import read_log

PROBE = ["The cat sat on the mat.", "Attention is all you need, or so the paper said."]


def _classifier(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, num_labels=2)
    return BertForSequenceClassification(cfg)


def test_record_matches_head_metrics_and_restores_mode(tiny_tokenizer, tmp_path):
    model = _classifier()
    model.train()
    monitor = AttentionMonitor(model, tiny_tokenizer, PROBE, log_path=tmp_path / "log.jsonl", store_heads=[(1, 2)])
    record = monitor.record(0)
    assert model.training and all(p.grad is None for p in model.parameters())
    expect = head_metrics(AttentionInspector(model, tiny_tokenizer)(PROBE))
    for k in METRICS:
        np.testing.assert_allclose(np.asarray(record["metrics"][k]).ravel(), expect[k], atol=1e-5)
    weights = np.asarray(record["weights"]["1,2"])
    n = len(record["tokens"])
    assert weights.shape == (n, n) and np.allclose(weights.sum(-1), 1, atol=1e-5)
    direct = AttentionInspector(model, tiny_tokenizer)(PROBE[0], layers=[1], heads=[2]).head(1, 2).numpy()
    np.testing.assert_allclose(weights, direct, atol=1e-6)
    monitor.record(5, loss=0.5)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 5] and json.loads(lines[1])["loss"] == 0.5


def test_plain_loop_warns_on_collapse_and_uniform(inspector, caplog):
    import copy

    model = copy.deepcopy(inspector.model)  # pretrained: healthy heads (random tiny models are all uniform)
    monitor = AttentionMonitor(model, inspector.tokenizer, SENTENCES[:3])
    first = monitor.record(0)
    assert first["warnings"] == [] and [1, 2] not in first["collapsed"] and [1, 0] not in first["uniform"]
    attn = model.encoder.layer[1].attention.self
    d = 32
    with torch.no_grad():
        attn.query.weight[2 * d : 3 * d] *= 400.0  # huge scores -> one-hot rows: collapse
        attn.query.bias[2 * d : 3 * d] *= 400.0
        attn.query.weight[0:d] = 0  # zero query -> uniform
        attn.query.bias[0:d] = 0
    with caplog.at_level(logging.WARNING, logger="hf_attn_inspect"):
        second = monitor.record(1)
    assert [1, 2] in second["collapsed"] and [1, 0] in second["uniform"]
    assert any("became collapsed: L1H2" in w for w in second["warnings"])
    assert any("became uniform: L1H0" in w for w in second["warnings"])
    assert any("L1H2" in r.getMessage() for r in caplog.records)
    third = monitor.record(2)
    assert third["warnings"] == []  # only transitions are warned about


def test_majority_uniform_is_reported_at_start(tiny_tokenizer):
    record = AttentionMonitor(tiny_models.build("bert"), tiny_tokenizer, PROBE).record(0)
    assert record["warnings"] == ["step 0: 8 of 8 heads are uniform"]


def test_monitor_rejects_bad_heads(tiny_tokenizer):
    with pytest.raises(InputError, match="out of range"):
        AttentionMonitor(tiny_models.build("bert"), tiny_tokenizer, PROBE, store_heads=[(5, 0)])
    with pytest.raises(InputError, match="probe text"):
        AttentionMonitor(tiny_models.build("bert"), tiny_tokenizer, [])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short real Trainer run (6 steps) with the callback recording every 2 steps."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    tok = tiny_models.tokenizer()
    out = tmp_path_factory.mktemp("trainer")
    texts = ["good movie", "bad movie", "I loved it", "I hated it"] * 6
    data = Dataset.from_dict({"text": texts, "label": [1, 0, 1, 0] * 6})
    data = data.map(lambda b: tok(b["text"], padding="max_length", max_length=12, truncation=True), batched=True)
    model = _classifier()
    args = TrainingArguments(str(out), max_steps=6, per_device_train_batch_size=4, report_to=[], logging_steps=3,
                             save_strategy="no", learning_rate=1e-3, use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tok)
    callback = AttentionStatsCallback(PROBE, every_n_steps=2, store_heads="all").attach(trainer)
    trainer.train()
    return {"out": out, "trainer": trainer, "callback": callback, "model": model}


def test_callback_one_record_per_n_steps(trained):
    log = trained["out"] / "attention_stats.jsonl"
    records = read_log(log)
    assert [r["step"] for r in records] == [0, 2, 4, 6]
    assert all(r["layers"] == 2 and r["heads"] == 4 for r in records)
    assert np.asarray(records[-1]["metrics"]["entropy"]).shape == (2, 4)
    assert len(records[0]["weights"]) == 8
    history = [h for h in trained["trainer"].state.log_history if "attn/entropy" in h]
    assert [h["step"] for h in history] == [0, 2, 4, 6]
    assert history[-1]["attn/entropy"] == pytest.approx(np.mean(records[-1]["metrics"]["entropy"]))
    # the parameters did change, and the log saw it
    assert records[0]["metrics"]["entropy"] != records[-1]["metrics"]["entropy"]


def test_trends_plot_is_a_valid_image(trained, tmp_path):
    log = trained["out"] / "attention_stats.jsonl"
    ax = plot_training_trends(log, "entropy")
    assert len(ax.lines) == 2  # one per layer
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [np.mean(r["metrics"]["entropy"][1]) for r in read_log(log)])
    ax.figure.set_size_inches(6, 4)
    ax.figure.savefig(tmp_path / "t.png", dpi=50)
    with Image.open(tmp_path / "t.png") as im:
        assert im.format == "PNG" and im.size == (300, 200)
    ax = plot_training_trends(trained["callback"], "max_weight", heads=[(0, 1), (1, 3), (1, 0)])
    assert [line.get_label() for line in ax.lines] == ["L0 H1", "L1 H3", "L1 H0"]
    with pytest.raises(InputError, match="unknown metric"):
        plot_training_trends(log, "nope")


def test_gif_from_log_and_checkpoints(trained, tmp_path, tiny_tokenizer):
    log = trained["out"] / "attention_stats.jsonl"
    paths = animate_attention(log, 1, 3, tmp_path / "a.gif", mp4=False, size=(4, 3), dpi=50)
    assert paths == [tmp_path / "a.gif"]
    with Image.open(paths[0]) as im:
        assert im.format == "GIF" and im.n_frames == 4 and im.size == (200, 150)
    dirs = []
    for seed in (0, 1, 2):
        d = tmp_path / f"ckpt{seed}"
        tiny_models.build("bert", seed=seed).save_pretrained(d)
        tiny_tokenizer.save_pretrained(d)
        dirs.append(d)
    paths = animate_attention(dirs, 0, 1, tmp_path / "c.gif", text="Hello, world!", mp4=False, dpi=40)
    with Image.open(paths[0]) as im:
        assert im.n_frames == 3 and im.size == (200, 200)
    plain = [{k: v for k, v in r.items() if k != "weights"} for r in read_log(log)]
    with pytest.raises(InputError, match="store_heads"):
        animate_attention(plain, 0, 0, tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()
