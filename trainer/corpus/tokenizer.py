"""Byte-level BPE with HF `tokenizers`, and the tokenised corpus as memory-mapped arrays.

Layout of `tokens_dir`: `train.bin` and `val.bin` (raw little-endian uint16, or uint32 for
vocabularies over 65,536), and `meta.json` ({"dtype", "vocab_size", "n_train", "n_val",
"eot_id", "n_train_docs", "n_val_docs"}, and "model_path" when the tokenizer is a transformers
model's). Documents are separated by the end-of-text token.
The validation split is whole documents, chosen by a seeded hash, never trained on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from trainer.checkpoint import atomic_write_text
from trainer.config import TokenizerConfig

EOT = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """Learn byte-level BPE merges on `texts` (GPT-2 style pre-tokenisation, every byte reachable)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ValueError(f"{path} is not a valid tokenizer.json: {exc}") from exc


def eot_id(tokenizer: Tokenizer) -> int:
    token_id = tokenizer.token_to_id(EOT)
    if token_id is None:  # a user's tokenizer without our special token: use its last id
        return tokenizer.get_vocab_size() - 1
    return token_id


def token_bytes(tokenizer: Tokenizer) -> list[bytes]:
    """The exact bytes of every token id (byte-level BPE tokens need not be valid UTF-8 alone)."""
    byte_decoder = {ch: b for b, ch in _bytes_to_unicode().items()}
    out: list[bytes] = []
    for token_id in range(tokenizer.get_vocab_size()):
        piece = tokenizer.id_to_token(token_id) or ""
        if piece == EOT or any(ch not in byte_decoder for ch in piece):
            out.append(piece.encode("utf-8"))
        else:
            out.append(bytes(byte_decoder[ch] for ch in piece))
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which ByteLevel uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def encode_documents(
    tokenizer: Tokenizer,
    documents: Iterator[str],
    tokens_dir: Path,
    val_fraction: float,
    seed: int = 0,
    total_docs: int | None = None,
    model_path: str | None = None,
    eot: int | None = None,
) -> dict[str, int | str]:
    """Tokenise documents into train.bin / val.bin, each document followed by EOT; returns meta.
    With `model_path` (a transformers model whose tokenizer this is, recorded in the meta), `eot`
    is the model's end-of-sequence id and no special tokens are added."""
    tokens_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.get_vocab_size())
    eot = eot_id(tokenizer) if eot is None else eot
    counts = {"train": 0, "val": 0}
    docs = {"train": 0, "val": 0}
    rng = np.random.default_rng(seed)
    tmp_paths = {split: tokens_dir / f".{split}.bin.tmp" for split in counts}
    handles = {split: open(path, "wb") for split, path in tmp_paths.items()}
    try:
        batch: list[str] = []

        def flush() -> None:
            for encoding in tokenizer.encode_batch(batch, add_special_tokens=model_path is None):
                split = "val" if rng.random() < val_fraction else "train"
                ids = np.asarray(encoding.ids + [eot], dtype=dtype)
                handles[split].write(ids.tobytes())
                counts[split] += len(ids)
                docs[split] += 1
            batch.clear()

        for doc in tqdm(documents, desc="tokenise", unit="doc", total=total_docs):
            batch.append(doc)
            if len(batch) >= 256:
                flush()
        flush()
    finally:
        for handle in handles.values():
            handle.close()
    if counts["val"] == 0 or counts["train"] == 0:
        raise ValueError("corpus too small: need documents in both the training and validation splits")
    for split, path in tmp_paths.items():
        path.replace(tokens_dir / f"{split}.bin")
    meta: dict[str, int | str] = {
        "dtype": dtype.str,
        "vocab_size": tokenizer.get_vocab_size(),
        "eot_id": eot,
        "n_train": counts["train"],
        "n_val": counts["val"],
        "n_train_docs": docs["train"],
        "n_val_docs": docs["val"],
    }
    if model_path is not None:
        meta["model_path"] = model_path
    atomic_write_text(tokens_dir / "meta.json", json.dumps(meta, indent=2))
    return meta


def load_token_meta(tokens_dir: Path) -> dict[str, int | str]:
    path = Path(tokens_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenised corpus at {tokens_dir} (run `monosemantic corpus` first)")
    return json.loads(path.read_text())


def load_token_split(tokens_dir: Path, split: str) -> np.ndarray:
    """The 1-D token stream of `split` ('train' or 'val') as a read-only memory map."""
    meta = load_token_meta(tokens_dir)
    n = int(meta[f"n_{split}"])
    return np.memmap(
        Path(tokens_dir) / f"{split}.bin", dtype=np.dtype(str(meta["dtype"])), mode="r", shape=(n,)
    )
