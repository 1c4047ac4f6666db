import json

import numpy as np
import torch

from trainer.config import HarvestConfig, ModelConfig
from trainer.harvest import document_starts, harvest
from trainer.lm.model import OneLayerTransformer


def test_harvest_rows_are_shuffled_and_traceable(tmp_path):
    torch.manual_seed(0)
    model = OneLayerTransformer(ModelConfig(vocab_size=50, n_ctx=8, d_model=16, n_heads=2, d_mlp=24)).eval()
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50, 50_000).astype(np.uint16)
    tokens[rng.choice(50_000, 400, replace=False)] = 0  # document ends
    cfg = HarvestConfig(n_tokens=1_000, shard_rows=400, batch_contexts=16, seed=5)
    manifest = harvest(model, tokens, 0, cfg, tmp_path, dtype="fp32")
    assert manifest["shards"] == ["acts_00000.npy", "acts_00001.npy", "acts_00002.npy"]
    assert json.loads((tmp_path / "manifest.json").read_text())["d_in"] == 24
    acts = np.concatenate([np.load(tmp_path / name) for name in manifest["shards"]])
    doc_pos = np.concatenate(
        [np.load(tmp_path / name.replace("acts", "doc_pos")) for name in manifest["shards"]]
    )
    assert acts.shape == (1_000, 24) and acts.dtype == np.float16 and doc_pos.shape == (1_000, 2)
    offsets = document_starts(tokens, 0)[doc_pos[:, 0]] + doc_pos[:, 1]
    assert np.mean(np.abs(np.diff(offsets)) == 1) < 0.1  # consecutive rows come from different contexts
    assert (doc_pos[:, 1] >= 0).all() and (offsets < len(tokens)).all()
    assert len(np.unique(offsets)) > 950  # rows are distinct tokens, not one context repeated
    # Resume keeps finished shards untouched; a fresh harvest rewrites them.
    stamp = (tmp_path / "acts_00000.npy").stat().st_mtime_ns
    harvest(model, tokens, 0, cfg, tmp_path, dtype="fp32", resume=True)
    assert (tmp_path / "acts_00000.npy").stat().st_mtime_ns == stamp
