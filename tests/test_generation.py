"""Generation capture: every row a generated token's query computed (KV cache on) equals transformers' eager
``generate(output_attentions=True)`` and one clean forward over the whole sequence."""

from __future__ import annotations

import pytest
import torch

import tiny_models
from hf_attn_inspect import AttentionInspector, AttentionResult, InputError
from hf_attn_inspect.capture.result import GenerationResult
from hf_attn_inspect.capture.inputs import Batch
from hf_attn_inspect.capture.request import CaptureRequest

PROMPT = "the cat sat on the mat"
N = 6
TOL = 1e-5


def _eager(family: str):
    model = tiny_models.build(family)
    model.config._attn_implementation_internal = "eager"
    return model


def _pair(family: str):
    """An inspector over a tiny ``family`` model (sdpa or its default) and the same weights loaded eager."""
    model = tiny_models.build(family)
    model.config._attn_implementation_internal = "sdpa"
    return AttentionInspector(model, tiny_models.tokenizer()), _eager(family)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=TOL, rtol=0), float((a - b).abs().max())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_rows_equal_eager_generate_and_clean_forward(family):
    insp, eager = _pair(family)
    res = insp.generate(PROMPT, max_new_tokens=N)
    enc = insp.tokenizer(PROMPT, return_tensors="pt", return_token_type_ids=False)
    ref = eager.generate(**enc, max_new_tokens=N, do_sample=False, output_attentions=True,
                         return_dict_in_generate=True, pad_token_id=0)
    seq = ref.sequences[0]
    p = enc["input_ids"].shape[1]
    assert res.prompt_length == p
    assert res.tokens == insp.tokenizer.convert_ids_to_tokens(seq.tolist())  # same tokens as greedy generate
    n = len(seq)
    for step, layers in enumerate(ref.attentions):
        for layer, w in enumerate(layers):
            rows = slice(0, p) if step == 0 else slice(p + step - 1, p + step)
            _close(res.attentions[layer, :, rows, : w.shape[-1]], w[0])
            assert (res.attentions[layer, :, rows, w.shape[-1]:] == 0).all()
    clean = eager(input_ids=seq[None], output_attentions=True).attentions
    _close(res.attentions, torch.stack([a[0] for a in clean]))  # every row, the last generated token's too
    assert res.attentions.shape[-1] == n
    # probabilities: softmax of the eager model's logits at the step that chose each token
    with torch.no_grad():
        logits = eager(input_ids=seq[None]).logits[0, p - 1:-1].softmax(-1)
    want = logits[torch.arange(n - p), seq[p:]]
    _close(torch.tensor(res.probabilities), want)
    assert res.alternatives[0][0][1] == pytest.approx(float(logits[0].max()), abs=TOL)
    # the row that wrote generated token k is the one of position p + k - 1
    _close(res.step_rows(1, 2), res.attentions[1, 2, p - 1:n - 1])


def test_encoder_decoder_rows_equal_eager_generate_and_clean_forward():
    insp, eager = _pair("bart")
    res = insp.generate(PROMPT, max_new_tokens=N)
    enc = insp.tokenizer(PROMPT, return_tensors="pt", return_token_type_ids=False)
    ref = eager.generate(**enc, max_new_tokens=N, do_sample=False, output_attentions=True,
                         return_dict_in_generate=True)
    seq = ref.sequences[0]
    assert res.decoder_tokens == insp.tokenizer.convert_ids_to_tokens(seq.tolist())
    assert res.prompt_length == 1 and res.tokens == insp.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    _close(res.attentions, torch.stack([a[0] for a in ref.encoder_attentions]))
    for step in range(len(ref.decoder_attentions)):
        for layer in range(2):
            d, c = ref.decoder_attentions[step][layer][0], ref.cross_attentions[step][layer][0]
            _close(res.decoder_attentions[layer, :, step:step + 1, : d.shape[-1]], d)
            _close(res.cross_attentions[layer, :, step:step + 1], c)
    clean = eager(**enc, decoder_input_ids=seq[None], output_attentions=True)
    _close(res.decoder_attentions, torch.stack([a[0] for a in clean.decoder_attentions]))
    _close(res.cross_attentions, torch.stack([a[0] for a in clean.cross_attentions]))
    _close(res.cross_attentions.sum(-1), torch.ones(res.cross_attentions.shape[:-1]))  # rows sum to 1 over the source
    assert res.step_rows(0, which="cross").shape == (res.num_generated, len(res.tokens))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_batched_prompts_equal_single_prompts(family):
    insp, _ = _pair(family)
    prompts = ["a much longer prompt than the other one here", "short one"]
    batched = insp.generate(prompts, max_new_tokens=N, measures=["norm"])
    for prompt, got in zip(prompts, batched):
        alone = insp.generate(prompt, max_new_tokens=N, measures=["norm"])
        assert got.tokens == alone.tokens and got.prompt_length == alone.prompt_length
        _close(got.attentions, alone.attentions)
        _close(got.measure("norm"), alone.measure("norm"))
        _close(torch.tensor(got.probabilities), torch.tensor(alone.probabilities))


def test_norm_measure_fills_the_same_rows_as_a_clean_forward():
    insp, _ = _pair("gpt2")
    res = insp.generate(PROMPT, max_new_tokens=N, measures=["norm"], layers=[1])
    ids = torch.tensor([insp.tokenizer.convert_tokens_to_ids(res.tokens)])
    clean = insp.record(Batch(inputs={"input_ids": ids}), CaptureRequest(measures=("norm",), layers=(1,)))
    rec = clean[("self", 1)]
    _close(res.measure("norm")[0], rec["weights"][0] * rec["norms"][0][:, None, :])
    assert res.layer_ids == [1]


def test_seeded_sampling_is_reproducible_and_equals_transformers():
    insp, eager = _pair("gpt2")
    kw = dict(max_new_tokens=N, do_sample=True, temperature=1.5, top_k=20, top_p=0.9)
    a = insp.generate(PROMPT, seed=7, **kw)
    b = insp.generate(PROMPT, seed=7, **kw)
    assert a.tokens == b.tokens and torch.equal(a.attentions, b.attentions)
    enc = insp.tokenizer(PROMPT, return_tensors="pt", return_token_type_ids=False)
    torch.manual_seed(7)
    ref = eager.generate(**enc, pad_token_id=0, **kw)
    assert a.tokens == insp.tokenizer.convert_ids_to_tokens(ref[0].tolist())
    others = {tuple(insp.generate(PROMPT, seed=s, **kw).generated_tokens) for s in range(4)}
    assert len(others) > 1  # the seed matters
    assert a.generation["seed"] == 7 and a.generation["do_sample"]


@pytest.mark.xdist_group("induction_decoder")  # with test_analysis's and test_importance's: trained once
def test_induction_layer_looks_at_the_token_after_the_previous_occurrence(trained_decoder):
    v, length = tiny_models.INDUCTION_V, 12
    insp = AttentionInspector(trained_decoder, None)
    hits = {0: 0, 1: 0}
    steps = copied = 0
    for seed in range(6):
        block = torch.randperm(v, generator=torch.Generator().manual_seed(seed))[:length]
        res = insp.generate(torch.cat([torch.tensor([v]), block, block[:1]]), max_new_tokens=length - 1)
        if res.generated_tokens != [str(int(t)) for t in block[1:]]:
            continue  # the tiny model does not copy every block; judge the heads where it does
        copied += 1
        steps += res.num_generated
        for k in range(res.num_generated):
            query = res.prompt_length + k - 1  # the position whose output predicted generated token k
            after_previous = query - length + 1  # the token after that token's earlier occurrence
            for layer in hits:
                hits[layer] += int(res.step_rows(layer)[k].argmax()) == after_previous
    assert copied >= 2
    assert hits[1] >= 0.9 * steps, (hits, steps)  # layer 1 (induction heads): nearly every step
    assert hits[0] <= 0.2 * steps, (hits, steps)  # layer 0 (previous-token heads): not there


def test_saved_generation_loads_as_itself(tmp_path):
    insp, _ = _pair("gpt2")
    res = insp.generate(PROMPT, max_new_tokens=3, measures=["norm"])
    res.save(tmp_path / "g.safetensors")
    back = AttentionResult.load(tmp_path / "g.safetensors")
    assert isinstance(back, GenerationResult)
    assert back.tokens == res.tokens and back.prompt_length == res.prompt_length
    assert back.probabilities == res.probabilities and back.alternatives == res.alternatives
    assert torch.equal(back.attentions, res.attentions) and torch.equal(back.measure("norm"), res.measure("norm"))


def test_refusals():
    bert = AttentionInspector(tiny_models.build("bert"), tiny_models.tokenizer())
    with pytest.raises(InputError, match="not a generative model"):
        bert.generate("hello")
    insp, _ = _pair("gpt2")
    with pytest.raises(InputError, match="max_new_tokens"):
        insp.generate("hello", max_new_tokens=0)
    with pytest.raises(InputError, match="exceeds the model's maximum"):
        insp.generate("hello", max_new_tokens=500)
    with pytest.raises(InputError, match="blank"):
        insp.generate(" ")


def test_long_generation_keeps_full_rows_where_they_fit_and_row_statistics_elsewhere(tmp_path):
    from hf_attn_inspect.core.errors import MemoryBudgetError
    from hf_attn_inspect.runs.generation import generate_within_budget
    from hf_attn_inspect.stats.metrics import ROW_QUANTITIES, row_quantities

    insp, _ = _pair("llama")
    n = 40
    full = insp.generate(PROMPT, max_new_tokens=n)
    one = insp.generation_estimate(PROMPT, n, [1]).total
    t = len(full.tokens)
    stats = 2 * 2 * 4 * (t + 1) * len(ROW_QUANTITIES) * 4
    with pytest.raises(MemoryBudgetError, match="memory budget"):
        insp.generate(PROMPT, max_new_tokens=n, max_memory=one + stats)
    res = generate_within_budget(insp, PROMPT, max_new_tokens=n, max_memory=one + stats + 1000)
    assert res.layer_ids == [1] and res.tokens == full.tokens  # the last layer full, the other as statistics
    _close(res.attentions[0], full.attentions[1])
    assert res.row_stats_layers == [0, 1]
    want = row_quantities(full.attentions[None], torch.ones(1, t, dtype=torch.bool))
    for name in ("entropy", "max_weight", "first_token", "previous_token"):
        _close(res.row_stats[name], want[name][0])
    back = AttentionResult.load(res.save(tmp_path / "long.safetensors"))
    assert torch.equal(back.row_stats["entropy"], res.row_stats["entropy"]) and back.row_stats_layers == [0, 1]
    with pytest.raises(MemoryBudgetError, match="one layer"):
        generate_within_budget(insp, PROMPT, max_new_tokens=n, max_memory=one // 2)
    # everything fits: the plain generation
    assert generate_within_budget(insp, PROMPT, max_new_tokens=n).layer_ids == [0, 1]
