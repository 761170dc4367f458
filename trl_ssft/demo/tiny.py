"""Tiny offline models and tokenizers for smoke tests, demos and benchmarks.

Nothing here touches a model hub: the tokenizer is a byte-level BPE trained on the given corpus
with the `tokenizers` library, the model is a small randomly initialised Qwen2 or Llama.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# transformers >= 5 loads any saved `model_type: qwen2` tokenizer as `Qwen2Tokenizer`, which replaces the
# pre-tokenizer of tokenizer.json by this split (one digit per token). Build with the same split so the
# in-memory tokenizer and `AutoTokenizer.from_pretrained(saved_dir)` tokenize identically.
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def build_tiny_tokenizer(corpus: Iterable[str], vocab_size: int = 600):
    """Train a byte-level BPE tokenizer on `corpus` and wrap it as a chat tokenizer.

    The result behaves like a small Qwen tokenizer: `<|im_end|>` is the EOS (end-of-turn) token,
    `<|pad|>` the padding token, and the chat template renders `<|im_start|>role\\n...<|im_end|>`.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    fast.chat_template = QWEN_CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def build_tiny_model(
    tokenizer,
    arch: str = "qwen2",
    tie_word_embeddings: bool = True,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 2048,
    seed: int = 0,
):
    """A randomly initialised causal LM sized to `tokenizer` (arch: ``qwen2``, ``qwen3`` or ``llama``)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    cls = {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "llama": LlamaConfig}[arch]
    config = cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny_model(
    path: str | os.PathLike,
    corpus: Iterable[str],
    arch: str = "qwen2",
    tie_word_embeddings: bool = True,
    vocab_size: int = 600,
    **model_kwargs,
) -> str:
    """Build a tiny tokenizer + model and `save_pretrained` both to `path`; returns the path."""
    tokenizer = build_tiny_tokenizer(corpus, vocab_size=vocab_size)
    model = build_tiny_model(tokenizer, arch=arch, tie_word_embeddings=tie_word_embeddings, **model_kwargs)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def build_word_tokenizer(vocab_size: int):
    """A word-level chat tokenizer with exactly `vocab_size` entries (4 special tokens + words w0, w1, ...):
    for benchmarks at a real vocabulary size (e.g. Qwen2.5's 151,936) on random token ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for i in range(vocab_size - len(vocab)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def spread_weights(model, sigma: float = 0.2, seed: int = 0) -> None:
    """Redraw every matrix of `model` in place with std `sigma` (generator seeded with `seed`).

    A default-initialised tiny model (std 0.02) has nearly flat logits and greedily repeats one token, which
    makes a generation parity check vacuous; at 0.2 each forking token leads to a different, varied
    continuation. Used by the vLLM tests and `benchmarks/generation_speed.py`.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * sigma)
