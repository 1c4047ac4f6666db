"""Tiny randomly initialised GPT-2, GPT-NeoX and Llama models with their own tokenizers, built
from transformers configs and saved to a folder (nothing downloaded), and a text corpus for them."""

from __future__ import annotations

import os
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from trainer.config import TokenizerConfig
from trainer.corpus.tokenizer import EOT, train_tokenizer

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


# Each family's transformers config: its class, its names for the shape every family shares
# (context, width, layers, heads), and what only it has (MLP width, grouped-query heads).
_STANDARD_NAMES = ("max_position_embeddings", "hidden_size", "num_hidden_layers", "num_attention_heads")
_CONFIGS = {
    "gpt2": ("GPT2Config", ("n_positions", "n_embd", "n_layer", "n_head"), lambda d, heads: {}),
    "gpt_neox": ("GPTNeoXConfig", _STANDARD_NAMES, lambda d, heads: {"intermediate_size": 4 * d}),
    "llama": (
        "LlamaConfig",
        _STANDARD_NAMES,
        lambda d, heads: {"intermediate_size": 3 * d, "num_key_value_heads": heads // 2},
    ),
}


def build_model(family: str, folder: Path, seed: int = 0, with_tokenizer: bool = True, **shape: int) -> Path:
    """Save a random `family` model (and its tokenizer) to `folder`; `shape` overrides the config."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    if family not in _CONFIGS:
        raise ValueError(family)
    text = corpus_text(seed=seed)
    if family == "llama":
        backend = _sentencepiece_style_tokenizer(text)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
    else:
        backend = _byte_level_tokenizer(text)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT, eos_token=EOT)
    d_model = shape.get("d_model", D_MODEL)
    n_heads = shape.get("n_heads", 4)
    sizes = (shape.get("n_ctx", N_CTX), d_model, shape.get("n_layers", N_LAYERS), n_heads)
    class_name, names, own = _CONFIGS[family]
    config = getattr(transformers, class_name)(
        vocab_size=len(tokenizer),
        **dict(zip(names, sizes, strict=True)),
        **own(d_model, n_heads),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
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
