"""The corpus stage: the text a run trains on (text.py: the built-in offline mix, or the user's
own files) and its tokens (tokenizer.py: byte-level BPE and the tokenised corpus as memory-mapped
arrays)."""
