"""The language model: our one-layer transformer (model.py) and its training loop (train.py), the
hook point every later stage reads it through (hooks.py, and hf_model.py for any `transformers`
causal LM), and pinning a unit while it writes (steering.py)."""
