"""The diagnosis: the chapter's three debug functions, the checklist on real models, five planted faults."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from hf_attn_inspect import AttentionInspector, InputError
from hf_attn_inspect.cli import main
from hf_attn_inspect.checks.chapter import debug_attention_collapse, debug_nan_attention, debug_uniform_attention
from hf_attn_inspect.checks.diagnose import CHECKS, DiagnosticRecorder, diagnose
from hf_attn_inspect.checks.findings import Finding
from hf_attn_inspect.checks.faults import FAULTS, all_caught, break_and_diagnose

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------- the chapter's functions
def test_uniform_attention_chapter_example_fails_and_random_passes(capsys):
    bad = debug_uniform_attention(torch.ones(1, 5, 64) * 0.1, torch.ones(1, 5, 64) * 0.1)
    assert bad.status == "fail" and bad.numbers["scaled_score_std"] < 0.1
    assert bad.numbers["d_k"] == 64 and abs(bad.numbers["q_std"]) < 1e-6
    assert any("low variance" in c for c in bad.causes)
    torch.manual_seed(0)
    good = debug_uniform_attention(torch.randn(1, 5, 64), torch.randn(1, 5, 64))
    assert good.status == "ok" and good.numbers["scaled_score_std"] > 0.5
    # raw and scaled score std are what they say: scaled = raw / sqrt(d_k)
    assert math.isclose(good.numbers["scaled_score_std"], good.numbers["raw_score_std"] / 8, rel_tol=1e-5)
    assert capsys.readouterr().out == ""  # nothing printed unless asked
    debug_uniform_attention(torch.randn(1, 5, 64), torch.randn(1, 5, 64), verbose=True)
    assert "uniform_attention" in capsys.readouterr().out


def test_collapse_chapter_example():
    w = torch.zeros(1, 5, 5)
    w[:, :, 2] = 1.0
    f = debug_attention_collapse(w)
    assert f.status == "fail"
    assert f.numbers["collapsed_rows"] == 5 and f.numbers["total_rows"] == 5
    assert f.numbers["dominant_positions"] == {2: 5}
    soft = torch.softmax(torch.randn(1, 6, 6) * 0.5, -1)
    assert debug_attention_collapse(soft).status == "ok"
    # padding rows do not count
    valid = torch.tensor([True, True, False, False, False])
    assert debug_attention_collapse(w, valid=valid).numbers["total_rows"] == 2


def test_nan_chapter_example():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 3, 8), torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    bad_mask = torch.tensor([[[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]]])
    f = debug_nan_attention(q, k, v, bad_mask)
    assert f.status == "fail"
    assert f.numbers["fully_masked_rows"] == 1 and f.numbers["weights_nan"] == 5 and f.numbers["output_nan"] == 8
    assert f.numbers["q_nan"] == 0 and f.numbers["scores_nan"] == 0
    good = torch.tensor([[[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]]])
    assert debug_nan_attention(q, k, v, good).status == "ok"
    q2 = q.clone()
    q2[0, 0, 0] = float("nan")
    f2 = debug_nan_attention(q2, k, v)
    assert f2.status == "fail" and f2.numbers["q_nan"] == 1 and "upstream" in f2.causes[0]


def test_finding_format_and_status():
    f = Finding("x", "warn", "something", {"a": 1.23456}, ["because"], "do this")
    text = f.format()
    assert text.startswith("[warn] x: something") and "a=1.235" in text and "cause: because" in text
    with pytest.raises(ValueError):
        Finding("x", "bad", "")


# ------------------------------------------------------------------------- the checklist on real models
@pytest.fixture(scope="module")
def healthy(inspector):
    return diagnose(inspector)


def test_healthy_embedded_model_passes_every_check(healthy):
    assert [f.check for f in healthy.findings] == list(CHECKS)
    assert healthy.ok and healthy.exit_code == 0
    not_ok = {f.check: f.status for f in healthy.findings if f.status != "ok"}
    # the only remark: the embedded model runs with sdpa, whose output_attentions returns no weights
    assert not_ok == {"sdpa_trap": "warn"}, healthy.format()
    assert healthy["sdpa_trap"].numbers == {"implementation": "sdpa", "layers_returned": 0}
    assert healthy["attention_scale"].numbers["scale_x_sqrt_dk"] == pytest.approx(1.0)
    # the ok line names the number the check compares (the median head's variance) beside its threshold
    scale = healthy["attention_scale"]
    assert f"median head's score variance is {scale.numbers['median_score_var']:.3g}" in scale.summary
    assert f"fail_var = 0.5 d_k = {scale.numbers['fail_var']:.3g}" in scale.summary
    assert scale.numbers["median_score_var"] < scale.numbers["fail_var"]
    assert healthy["masks_dropped"].numbers["padding_tokens"] > 10
    assert healthy["row_sums"].numbers["max_row_sum_error"] < 1e-5


@pytest.fixture(scope="module")
def reports(inspector):
    before = {k: v.clone() for k, v in inspector.model.state_dict().items()}
    out = break_and_diagnose(inspector)
    # planting faults never touches the healthy model
    after = inspector.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(getattr(m, "scaling", None) != 1.0 for m in inspector.model.modules())
    return out


def test_five_faults_planted(reports):
    assert len(FAULTS) == 5 and list(reports) == ["healthy", *FAULTS]
    assert len({f.check for f in FAULTS.values()}) == 5  # five different checks


@pytest.mark.parametrize("name", list(FAULTS))
def test_each_planted_fault_fails_its_check(reports, name):
    report = reports[name]
    fault = FAULTS[name]
    assert report[fault.check].status == "fail", report.format()
    assert report.exit_code == 1 and fault.check in report.failed
    assert report[fault.check].causes and report[fault.check].fix


def test_fault_numbers_are_right(reports):
    r = reports["queries_zeroed"]
    assert r["uniform_heads"].numbers["uniform_heads"] == 72
    assert r["uniform_heads"].numbers["uniform_q_std"] == 0.0  # the cause is named
    assert any("low-variance" in c for c in r["uniform_heads"].causes)
    r = reports["scale_removed"]
    assert r["attention_scale"].numbers["scale"] == 1.0
    assert r["attention_scale"].numbers["scale_x_sqrt_dk"] == pytest.approx(math.sqrt(32))
    r = reports["scores_blown_up"]
    assert r["attention_scale"].status == "ok"  # the scale is right; the scores are not
    assert r["collapsed_heads"].numbers["share"] > 0.5
    r = reports["fully_masked_row"]
    assert r["fully_masked_rows"].numbers["masked_rows_x_layers"] == 6 * len(r.texts)  # row 1, every layer, every text
    r = reports["mask_dropped"]
    assert r["padding_leak"].status == "fail" and r["padding_leak"].numbers["max_weight_on_padding"] > 0.1


def test_break_attention_script_table(reports):
    spec = importlib.util.spec_from_file_location("break_attention", ROOT / "scripts" / "break_attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.report_text(reports)
    lines = text.splitlines()
    assert lines[1].startswith("healthy") and "fail" not in lines[1]
    assert sum(line.rstrip().endswith("caught") for line in lines) == 5 and "MISSED" not in text
    assert all_caught(reports)


def test_nan_in_the_capture_path_is_caught(inspector):
    class NaNQuery(DiagnosticRecorder):
        def compute(self, call):
            if call.site.layer == 2:
                call.query = call.query.clone()
                call.query[0, 0, 1, 0] = float("nan")
            return super().compute(call)

    r = diagnose(inspector, ["one text", "and a longer second text"], probe_class=NaNQuery)
    f = r["nan_inf"]
    assert f.status == "fail" and f.numbers["q"] >= 1
    assert f.numbers["layers"][0] == "self:2" and "self:1" not in f.numbers["layers"]  # first layer named


def test_sdpa_trap_ok_on_eager_model(tiny_model, tiny_tokenizer):
    r = diagnose(AttentionInspector(tiny_model("bert"), tiny_tokenizer))
    assert r["sdpa_trap"].status == "ok" and r["sdpa_trap"].numbers["layers_returned"] == 2
    # a random-initialised model attends (almost) uniformly: the checklist says so and names a cause
    assert r["uniform_heads"].status == "fail" and r["uniform_heads"].causes


def test_diagnose_accepts_a_model_and_tokenizer(tiny_model, tiny_tokenizer):
    r = diagnose(tiny_model("gpt2"), ["a b c", "a much longer text here"], tokenizer=tiny_tokenizer)
    assert r.texts == ["a b c", "a much longer text here"] and len(r.findings) == len(CHECKS)
    with pytest.raises(InputError):
        diagnose(42)
    with pytest.raises(InputError):
        diagnose(tiny_model("gpt2"), [], tokenizer=tiny_tokenizer)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bart", "deberta"])
def test_checklist_runs_on_every_family(family, tiny_model, tiny_tokenizer):
    r = diagnose(AttentionInspector(tiny_model(family), tiny_tokenizer))
    for check in ("fully_masked_rows", "row_sums", "padding_leak", "masks_dropped"):
        assert r[check].status == "ok", r.format()


# ------------------------------------------------------------------------- the command line
def test_cli_debug_healthy_exit_0(capsys):
    code = main(["debug", "--device", "cpu", "The cat sat on the mat.", "Hi!"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    for check in CHECKS:
        assert any(line.startswith(("[ok]", "[warn]")) and f" {check}:" in line for line in lines), check
    assert "result: healthy" in out and "numbers:" in out


def test_cli_debug_failing_model_exit_1(tiny_dir, capsys):
    code = main(["debug", "--model", str(tiny_dir("bert")), "--device", "cpu", "--brief", "one", "two three four"])
    out = capsys.readouterr().out
    assert code == 1
    assert "[FAIL] uniform_heads" in out and "numbers:" not in out and "result: BROKEN: uniform_heads" in out


@pytest.mark.parametrize("args", [["   "], ["--max-length", "1", "text"], ["--model", "/no/such/model", "text"]])
def test_cli_debug_bad_input_exit_2(args, capsys):
    assert main(["debug", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
