"""Tiny randomly initialised models of each family the toolkit must handle, built from configs (offline)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from hf_attn_inspect import default_model_path

FAMILIES = ("bert", "gpt2", "llama", "bart", "sdpa_bert", "deberta", "llama_long")
#: Tiny BERTs with a task head (:func:`build` takes them too; the loader tests use them).
HEAD_FAMILIES = ("bert_cls", "bert_mlm")

#: Positions of the long-context tiny Llama (``llama_long``) and of its saved tokenizer.
LONG_POSITIONS = 32768


def tokenizer():
    """The embedded MiniLM WordPiece tokenizer (vocabulary 30522), shared by every tiny model."""
    return AutoTokenizer.from_pretrained(default_model_path())


def build(family: str, seed: int = 0):
    """A tiny random model of ``family`` in eval mode (float32, CPU)."""
    import transformers as tf

    torch.manual_seed(seed)
    vocab = 30522
    if family in ("bert_cls", "bert_mlm"):  # task heads (sequence classification, 2 labels; masked LM)
        cfg = tf.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=128, num_labels=2)
        model = (tf.BertForSequenceClassification if family == "bert_cls" else tf.BertForMaskedLM)(cfg)
    elif family in ("bert", "sdpa_bert"):
        cfg = tf.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=128)
        impl = "eager" if family == "bert" else "sdpa"
        model = tf.BertModel(cfg)
        model.config._attn_implementation_internal = impl
    elif family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                            bos_token_id=101, eos_token_id=102)
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "llama":
        cfg = tf.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                             pad_token_id=0)
        model = tf.LlamaForCausalLM(cfg)
    elif family == "llama_long":  # long-context tiny Llama: GQA 4q/2kv heads, RoPE, 32k positions
        cfg = tf.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=LONG_POSITIONS,
                             pad_token_id=0)
        model = tf.LlamaForCausalLM(cfg)
    elif family == "bart":
        cfg = tf.BartConfig(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2,
                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                            decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=0,
                            bos_token_id=101, eos_token_id=102, decoder_start_token_id=101)
        model = tf.BartForConditionalGeneration(cfg)
    elif family == "deberta":
        cfg = tf.DebertaV2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=128)
        model = tf.DebertaV2Model(cfg)
    else:
        raise ValueError(family)
    return model.eval()


def save(family: str, directory: Path) -> Path:
    """Save a tiny ``family`` model and the tokenizer to ``directory`` (for the command line)."""
    model = build(family)
    model.save_pretrained(directory)
    tok = tokenizer()
    if family == "llama_long":
        tok.model_max_length = LONG_POSITIONS
    tok.save_pretrained(directory)
    return directory


# ------------------------------------------------------------------ a tiny decoder that learns induction
#: Vocabulary (token ``INDUCTION_V`` is BOS/padding) and block length of the induction decoder's inputs.
INDUCTION_V, INDUCTION_T = 64, 12


def induction_decoder(seed: int = 0):
    """A 2-layer x 4-head Llama (sdpa) over ``INDUCTION_V + 1`` tokens, random weights."""
    import transformers as tf

    torch.manual_seed(seed)
    v = INDUCTION_V
    cfg = tf.LlamaConfig(vocab_size=v + 1, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         bos_token_id=v, eos_token_id=v, pad_token_id=v)
    model = tf.LlamaForCausalLM(cfg)
    model.config._attn_implementation_internal = "sdpa"
    return model


def train_induction(model, steps: int = 400, seed: int = 1) -> float:
    """Train ``model`` on BOS + a random block + the same block, loss on the second copy; returns the last loss.

    The block length varies from step to step (6 to 16 tokens), so no fixed positional offset solves the
    task: the model learns the two-layer circuit, previous-token heads in layer 0 feeding induction heads
    in layer 1 (the detector and importance tests rely on both).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest and does not fight the other tests
    v = INDUCTION_V
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(steps):
            t = int(torch.randint(6, 17, (1,), generator=gen))
            r = torch.stack([torch.randperm(v, generator=gen)[:t] for _ in range(32)])
            x = torch.cat([torch.full((32, 1), v), r, r], 1)
            logits = model(input_ids=x).logits
            # loss only on the second copy, where the next token is predictable by induction
            loss = torch.nn.functional.cross_entropy(logits[:, t + 1:-1].reshape(-1, v + 1), x[:, t + 2:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        return float(loss.detach())
    finally:
        torch.set_num_threads(threads)
