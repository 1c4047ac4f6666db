"""A harvest records its model's weights digest and hook; train-sae, evaluate and bench_pareto
refuse rows (or an SAE trained on them) of another model, and older manifests still work."""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from monosemantic import pipeline
from monosemantic.cli import main
from trainer.config import EvalConfig, HarvestConfig, ModelConfig, RunConfig, SAEConfig, TokenizerConfig
from trainer.lm.model import OneLayerTransformer
from trainer.provenance import (
    DIGEST_KEY,
    ModelIdentity,
    ModelMismatch,
    UnrecordedModelWarning,
    check_same_model,
    weights_digest,
)
from trainer.sae import SparseAutoencoder

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_pareto  # noqa: E402

VOCAB, N_CTX, D_MLP = 64, 16, 64


def tiny_run(root: Path, seed: int) -> RunConfig:
    """A run folder with its own saved model (seed `seed`) and a tokenised corpus."""
    cfg = RunConfig(
        out_dir=str(root),
        run_name=root.name,
        tokenizer=TokenizerConfig(tokenizer_path="bytes"),
        model=ModelConfig(vocab_size=VOCAB, n_ctx=N_CTX, d_model=32, n_heads=2, d_mlp=D_MLP),
        harvest=HarvestConfig(n_tokens=1024, shard_rows=512, batch_contexts=16),
        sae=SAEConfig(d_in=D_MLP, d_sae=96, n_tokens=1024, batch_size=256),
        eval=EvalConfig(n_tokens=256, batch_contexts=8),
    )
    torch.manual_seed(seed)
    OneLayerTransformer(cfg.model).save(cfg.lm_dir)
    cfg.tokens_dir.mkdir(parents=True)
    tokens = np.random.default_rng(0).integers(1, VOCAB, 6000).astype(np.uint16)
    tokens[::200] = 0  # document ends
    tokens[:5000].tofile(cfg.tokens_dir / "train.bin")
    tokens[5000:].tofile(cfg.tokens_dir / "val.bin")
    meta = {"n_train": 5000, "n_val": 1000, "dtype": "uint16", "eot_id": 0}
    (cfg.tokens_dir / "meta.json").write_text(json.dumps(meta))
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, RunConfig]:
    """Two runs whose models differ only in their seed, each with its own harvest."""
    root = tmp_path_factory.mktemp("provenance")
    a, b = tiny_run(root / "a", seed=0), tiny_run(root / "b", seed=1)
    pipeline.run_harvest(a)
    pipeline.run_harvest(b)
    return a, b


def manifest(cfg: RunConfig) -> dict:
    return json.loads((cfg.activations_dir / "manifest.json").read_text())


def test_the_harvest_records_its_models_weights(runs: tuple[RunConfig, RunConfig]) -> None:
    a, b = runs
    digest_a, digest_b = weights_digest(a.lm_dir), weights_digest(b.lm_dir)
    assert digest_a is not None and len(digest_a) == 64 and digest_a != digest_b
    assert manifest(a)[DIGEST_KEY] == digest_a and manifest(b)[DIGEST_KEY] == digest_b
    assert manifest(a)["hook"] == "blocks.0.mlp.hook_post"
    assert weights_digest(a.tokens_dir) is None  # a folder without weights: unknown, not an error


def test_train_sae_refuses_another_models_activations(
    runs: tuple[RunConfig, RunConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = runs
    argv = ["train-sae", "--preset", "tiny", "--out-dir", b.out_dir, "--activations", str(a.activations_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: the activations in {a.activations_dir}")
    assert "another model" in err and weights_digest(a.lm_dir)[:12] in err  # type: ignore[index]
    assert not list(b.root.glob("sae_*"))  # refused before training wrote anything


def test_evaluate_refuses_an_sae_trained_on_another_models_rows(runs: tuple[RunConfig, RunConfig]) -> None:
    a, b = runs
    pipeline.run_train_sae(a)  # its own harvest: accepted
    assert SparseAutoencoder.load(a.sae_dir).training_record[DIGEST_KEY] == weights_digest(a.lm_dir)
    assert pipeline.run_evaluate(a)["n_tokens"] > 0  # its own model: evaluated
    foreign = dataclasses.replace(b, sae_path=str(a.sae_dir))
    with pytest.raises(ModelMismatch, match=r"the SAE in .* was trained on are from another model"):
        pipeline.run_evaluate(foreign)
    assert not foreign.eval_dir.exists()


def test_a_manifest_from_before_digests_still_trains_with_one_warning(
    runs: tuple[RunConfig, RunConfig], tmp_path: Path
) -> None:
    a, _b = runs
    old = tmp_path / "old-harvest"
    old.mkdir()
    for shard in a.activations_dir.glob("*.npy"):
        (old / shard.name).symlink_to(shard)
    (old / "manifest.json").write_text(json.dumps({k: v for k, v in manifest(a).items() if k != DIGEST_KEY}))
    model = ModelIdentity.own(a.lm_dir)
    with pytest.warns(UnrecordedModelWarning, match="do not record their model"):
        check_same_model(manifest_of(old), model, f"the activations in {old}", "", warn_unrecorded=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: a second look says nothing
        check_same_model(manifest_of(old), model, f"the activations in {old}", "", warn_unrecorded=True)
    cfg = dataclasses.replace(a, out_dir=str(tmp_path / "run"), run_name="old")
    cfg.lm_dir.mkdir(parents=True)
    for file in a.lm_dir.iterdir():
        (cfg.lm_dir / file.name).write_bytes(file.read_bytes())
    pipeline.run_train_sae(cfg, activations_file=str(old))
    assert DIGEST_KEY not in SparseAutoencoder.load(cfg.sae_dir).training_record


def manifest_of(harvest: Path) -> dict:
    return json.loads((harvest / "manifest.json").read_text())


def test_a_harvest_of_another_hook_is_refused(runs: tuple[RunConfig, RunConfig]) -> None:
    a, _b = runs
    record = {**manifest(a), "hook": "blocks.0.hook_resid_post"}
    with pytest.raises(ModelMismatch, match="from hook blocks.0.hook_resid_post"):
        check_same_model(record, ModelIdentity.own(a.lm_dir), "the activations", "", warn_unrecorded=False)


def test_bench_pareto_checks_its_lm_and_tells_harvests_apart(
    runs: tuple[RunConfig, RunConfig], tmp_path: Path
) -> None:
    a, b = runs
    bench_pareto.check_lm(a.activations_dir, a.root)
    with pytest.raises(SystemExit, match=r"^error: the activations in .* are from another model"):
        bench_pareto.check_lm(a.activations_dir, b.root)
    rows_a, source_a = bench_pareto.write_training_rows(a.activations_dir, 512, tmp_path)
    rows_b, source_b = bench_pareto.write_training_rows(b.activations_dir, 512, tmp_path)
    # Same seed, size and hook: only the models differ, and so do the cached training rows.
    assert source_a != source_b and rows_a != rows_b
    assert not np.array_equal(np.load(rows_a), np.load(rows_b))
