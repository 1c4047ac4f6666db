"""Tiny randomly initialised GPT-2, GPT-NeoX and Llama models with their own tokenizers, built
from transformers configs and saved to a folder (nothing downloaded), and a text corpus for them."""

from __future__ import annotations

import os
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from trainer.config import TokenizerConfig
from trainer.tokenizer import EOT, train_tokenizer

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be fetched: every model here is built locally

FAMILIES = ("gpt2", "gpt_neox", "llama")
N_LAYERS = 2
D_MODEL = 32
N_CTX = 64

WORDS = (
    "the a cat dog sat on mat ran to house river tree blue green red big small quickly slowly "
    "and but because über café naïve 東京 数字 1 2 3 42 1999 ( ) { } = + def return print if else"
).split()


def corpus_text(n_docs: int = 400, seed: int = 0) -> str:
    """Documents of random words, one per paragraph: varied enough for a BPE and for harvests."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(4)]
        docs.append(". ".join(sentences).capitalize() + ".")
    return "\n\n".join(docs)


def _byte_level_tokenizer(text: str) -> Tokenizer:
    return train_tokenizer([text], TokenizerConfig(vocab_size=320))


def _sentencepiece_style_tokenizer(text: str) -> Tokenizer:
    """Llama's layout: '▁' for spaces, byte fallback tokens <0x00>..<0xFF>, <unk> <s> </s> first."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator([text], trainer=trainer)
    return tokenizer


def build_model(family: str, folder: Path, seed: int = 0, with_tokenizer: bool = True, **shape: int) -> Path:
    """Save a random `family` model (and its tokenizer) to `folder`; `shape` overrides the config."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        PreTrainedTokenizerFast,
    )

    text = corpus_text(seed=seed)
    if family == "llama":
        backend = _sentencepiece_style_tokenizer(text)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
    else:
        backend = _byte_level_tokenizer(text)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT, eos_token=EOT)
    vocab = len(tokenizer)
    d_model = shape.get("d_model", D_MODEL)
    n_layers = shape.get("n_layers", N_LAYERS)
    n_heads = shape.get("n_heads", 4)
    n_ctx = shape.get("n_ctx", N_CTX)
    if family == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=n_ctx,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    elif family == "gpt_neox":
        config = GPTNeoXConfig(
            vocab_size=vocab,
            max_position_embeddings=n_ctx,
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            intermediate_size=4 * d_model,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    elif family == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            max_position_embeddings=n_ctx,
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_heads // 2,
            intermediate_size=3 * d_model,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if with_tokenizer:
        tokenizer.save_pretrained(folder)
    return folder


def write_corpus(path: Path, seed: int = 1) -> Path:
    path.write_text(corpus_text(n_docs=600, seed=seed))
    return path
