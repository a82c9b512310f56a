"""T5's relative position bias folded into the mask under every mask kind the attention function receives."""

import torch
import transformers as tf

from hf_attn_inspect import AttentionInspector
from hf_attn_inspect.checks.verify import verify


def _t5() -> tf.T5ForConditionalGeneration:
    torch.manual_seed(0)
    cfg = tf.T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, decoder_start_token_id=0, pad_token_id=0)
    model = tf.T5ForConditionalGeneration(cfg).eval()
    model.set_attn_implementation("sdpa")
    return model


def test_verify_t5_under_sdpa_masks(tiny_tokenizer):
    """Under sdpa the model's own function gets boolean masks (padded batch) or none at all (the causal skip of an
    unpadded decoder); with the bias folded into them its output equals the eager reference (it differed by up
    to 2.6 when a boolean mask was added to the bias as 0/1)."""
    inspector = AttentionInspector(_t5(), tiny_tokenizer)
    padded = verify(inspector, ["a short one", "a much longer sentence with many more words in it"],
                    pairs=["x y", "one two three four five"])
    unpadded = verify(inspector, ["a b c", "d e f"], pairs=["x y z", "u v w"])
    for report in (padded, unpadded):
        assert report.implementation == "sdpa"
        assert len(report.layers) == 6 and all(c.output_max_diff <= 1e-5 for c in report.layers), report.format()
