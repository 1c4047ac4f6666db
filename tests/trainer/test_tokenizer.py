import numpy as np

from trainer.config import TokenizerConfig
from trainer.corpus.tokenizer import EOT, encode_documents, load_token_split, token_bytes, train_tokenizer

TEXTS = [
    "def f(x):\n    return x  # the answer\n",
    "The cat sat on the mat. ",
    "Привет, мир! 日本語のテキスト",
    "\t\tindent\r\nwindows line",
    "emoji 🎉 and bytes \u200b zero-width",
] * 40


def test_bpe_round_trips_text_exactly_and_token_bytes_concatenate():
    tokenizer = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=400))
    pieces = token_bytes(tokenizer)
    assert pieces[tokenizer.token_to_id(EOT)] == EOT.encode()
    for text in set(TEXTS):
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids) == text
        assert b"".join(pieces[i] for i in ids) == text.encode("utf-8")


def test_token_arrays_hold_documents_and_a_held_out_split(tmp_path):
    tokenizer = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=400))
    docs = [f"document number {i}. " + TEXTS[i % 5] for i in range(300)]
    meta = encode_documents(tokenizer, iter(docs), tmp_path, val_fraction=0.2, seed=1)
    train, val = load_token_split(tmp_path, "train"), load_token_split(tmp_path, "val")
    eot = meta["eot_id"]
    assert meta["n_train_docs"] + meta["n_val_docs"] == 300
    assert 30 < meta["n_val_docs"] < 90
    assert (train == eot).sum() == meta["n_train_docs"] and (val == eot).sum() == meta["n_val_docs"]
    decoded = tokenizer.decode([int(t) for t in np.asarray(train)], skip_special_tokens=False).split(EOT)
    val_decoded = tokenizer.decode([int(t) for t in np.asarray(val)], skip_special_tokens=False).split(EOT)
    assert sorted(decoded[:-1] + val_decoded[:-1]) == sorted(docs)
    assert not set(decoded[:-1]) & set(val_decoded[:-1])
