import numpy as np
import pytest
import torch

from trainer.checkpoint import CheckpointError
from trainer.config import LMTrainConfig, ModelConfig
from trainer.lm.model import OneLayerTransformer
from trainer.lm.train import CHECKPOINT_NAME, train_lm

MODEL = ModelConfig(vocab_size=64, n_ctx=16, d_model=32, n_heads=2, d_mlp=64)


def _tokens(n: int, seed: int) -> np.ndarray:
    # A learnable stream: each token is usually the previous one plus one.
    rng = np.random.default_rng(seed)
    steps = np.where(rng.random(n) < 0.9, 1, rng.integers(0, 64, n))
    return (np.cumsum(steps) % 64).astype(np.uint16)


def test_lm_learns_and_exposes_the_mlp_hook(tmp_path):
    cfg = LMTrainConfig(
        n_steps=60,
        batch_size=16,
        lr=1e-2,
        warmup_steps=5,
        eval_interval=30,
        checkpoint_interval=30,
        dtype="fp32",
    )
    result = train_lm(MODEL, cfg, _tokens(20_000, 0), _tokens(2_000, 1), tmp_path)
    assert result.val_loss < 0.6 * np.log(64)
    model = OneLayerTransformer.load(tmp_path)
    idx = torch.from_numpy(_tokens(32, 2).astype(np.int64)).view(2, 16)
    clean = model(idx, return_mlp_post=True)
    assert clean.mlp_post is not None and clean.mlp_post.shape == (2, 16, 64)
    assert torch.allclose(model.mlp_activations(idx), clean.mlp_post)
    same = model(idx, mlp_replacement=lambda acts: acts.clone())
    assert torch.allclose(same.logits, clean.logits)
    ablated = model(idx, mlp_replacement=torch.zeros_like)
    assert not torch.allclose(ablated.logits, clean.logits)


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    cfg = LMTrainConfig(
        n_steps=40, batch_size=8, warmup_steps=5, eval_interval=20, checkpoint_interval=10, dtype="bf16"
    )
    train_tokens, val_tokens = _tokens(5_000, 0), _tokens(1_000, 1)
    train_lm(MODEL, cfg, train_tokens, val_tokens, tmp_path / "straight")
    train_lm(MODEL, cfg, train_tokens, val_tokens, tmp_path / "resumed", stop_after_step=20)
    interrupted = OneLayerTransformer.load(tmp_path / "resumed")
    train_lm(MODEL, cfg, train_tokens, val_tokens, tmp_path / "resumed", resume=True)
    straight = OneLayerTransformer.load(tmp_path / "straight").state_dict()
    resumed = OneLayerTransformer.load(tmp_path / "resumed").state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not all(torch.equal(straight[k], v) for k, v in interrupted.state_dict().items())


def test_corrupt_checkpoint_and_weights_are_clear_errors(tmp_path):
    cfg = LMTrainConfig(n_steps=4, batch_size=4, warmup_steps=1, eval_interval=2, checkpoint_interval=2)
    train_lm(MODEL, cfg, _tokens(2_000, 0), _tokens(500, 1), tmp_path)
    checkpoint = tmp_path / CHECKPOINT_NAME
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train_lm(MODEL, cfg, _tokens(2_000, 0), _tokens(500, 1), tmp_path, resume=True)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        OneLayerTransformer.load(tmp_path)
