"""The loader keeps task heads (the model class follows ``config.architectures``), and importance then uses
the head's objective: cross-entropy with accuracy for a sequence classifier, the masked-LM loss for a masked LM."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import transformers as tf

from hf_attn_inspect import AttentionInspector
from hf_attn_inspect.capture.inspector import model_class
from hf_attn_inspect.runs.importance import default_objective
from conftest import SENTENCES

TEXTS = SENTENCES[:6]
LABELS = [0, 1, 0, 1, 1, 0]


@pytest.mark.parametrize("archs,expected", [
    (["BertForSequenceClassification"], "AutoModelForSequenceClassification"),
    (["BertForTokenClassification"], "AutoModelForTokenClassification"),
    (["BertForQuestionAnswering"], "AutoModelForQuestionAnswering"),
    (["BertForMaskedLM"], "AutoModelForMaskedLM"),
    (["BertLMHeadModel"], "AutoModelForCausalLM"),
    (["BertModel"], "AutoModel"),
    (None, "AutoModel"),
    (["BertForConditionalGeneration"], "AutoModel"),  # no seq2seq BERT: the mapped class cannot load it
])
def test_model_class_follows_the_architecture_name(archs, expected):
    assert model_class(tf.BertConfig(architectures=archs)).__name__ == expected


def test_model_class_of_seq2seq_causal_and_vision_configs():
    assert model_class(tf.BartConfig(architectures=["BartForConditionalGeneration"])) is tf.AutoModelForSeq2SeqLM
    assert model_class(tf.BartConfig(architectures=["BartModel"])) is tf.AutoModelForSeq2SeqLM  # as before
    assert model_class(tf.BartConfig(architectures=["BartForSequenceClassification"])) is tf.AutoModelForSequenceClassification
    assert model_class(tf.GPT2Config(architectures=["GPT2LMHeadModel"])) is tf.AutoModelForCausalLM
    assert model_class(tf.ViTConfig(architectures=["ViTForImageClassification"])) is tf.AutoModelForImageClassification


def test_loaded_class_keeps_the_head_and_the_default_stays_a_plain_encoder(tiny_dir, inspector):
    assert type(inspector.model).__name__ == "BertModel"  # MiniLM: architectures ["BertModel"]
    clf = AttentionInspector.from_pretrained(tiny_dir("bert_cls"), device="cpu")
    assert type(clf.model) is tf.BertForSequenceClassification
    # the saved classifier weights were loaded, not a fresh head
    saved = tf.BertForSequenceClassification.from_pretrained(tiny_dir("bert_cls"))
    torch.testing.assert_close(clf.model.classifier.weight, saved.classifier.weight, rtol=0, atol=0)
    mlm = AttentionInspector.from_pretrained(tiny_dir("bert_mlm"), device="cpu")
    assert type(mlm.model) is tf.BertForMaskedLM
    assert default_objective(mlm).kind == "masked_lm"
    assert default_objective(clf, labels=True).kind == "classification"


def test_importance_command_on_a_saved_classifier_records_cross_entropy_and_accuracy(tiny_dir, tmp_path, capsys):
    from hf_attn_inspect.cli import main

    data = tmp_path / "data.csv"
    pd.DataFrame({"text": TEXTS, "label": LABELS}).to_csv(data, index=False)
    out = tmp_path / "imp"
    code = main(["importance", "--model", str(tiny_dir("bert_cls")), "--device", "cpu", "--dataset", str(data),
                 "--label-column", "label", "--no-pruning", "--batch-size", "3", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    run = json.loads((out / "run.json").read_text())
    assert run["objective"] == "classification cross-entropy" and run["unit"] == "nats"
    table = pd.read_csv(out / "head_importance.csv")
    assert {"accuracy", "accuracy_change"} <= set(table.columns)
    # the intact model's objective and accuracy, computed independently from the saved classifier
    model = tf.AutoModelForSequenceClassification.from_pretrained(tiny_dir("bert_cls")).eval()
    tok = tf.AutoTokenizer.from_pretrained(tiny_dir("bert_cls"))
    with torch.no_grad():
        logits = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in TEXTS])
    labels = torch.tensor(LABELS)
    ce = F.cross_entropy(logits, labels, reduction="none").mean().item()
    acc = (logits.argmax(-1) == labels).float().mean().item()
    assert table["objective"].iloc[0] == pytest.approx(ce, abs=1e-5)
    assert table["accuracy"].iloc[0] == pytest.approx(acc, abs=1e-6)
    # removing a head changes the classifier's loss (no longer the base encoder's 1 - cos, which is 0 intact)
    assert table["importance"].abs().max() > 1e-6


def test_importance_command_on_a_classifier_without_labels_is_one_line_exit_2(tiny_dir, tmp_path, capsys):
    from hf_attn_inspect.cli import main

    code = main(["importance", "--model", str(tiny_dir("bert_cls")), "--device", "cpu", "--limit", "2",
                 "--no-pruning", "--no-progress", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "needs labels" in err and "--label-column" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
