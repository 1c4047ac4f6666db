"""`--sae PATH` end to end: an SAE folder in SAELens's layout (not one of ours) evaluated and
analysed on the tiny real run's model, then browsed; a folder that does not fit is refused before
anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from app.main import create_app
from app.settings import Settings
from monosemantic.cli import main
from trainer.corpus.tokenizer import load_tokenizer
from trainer.lm.model import OneLayerTransformer
from trainer.sae.autoencoder import load_sae

K = 8


def saelens_folder(
    folder: Path, tensors: dict[str, torch.Tensor], hook: str = "blocks.0.mlp.hook_post"
) -> Path:
    """A TopK SAE in SAELens 6's saved layout (cfg.json with "metadata", rescaled decoder norms)."""
    folder.mkdir(parents=True)
    d_sae, d_in = tensors["W_dec"].shape
    cfg = {
        "architecture": "topk",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "k": K,
        "rescale_acts_by_decoder_norm": True,
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": hook, "model_name": "tiny"},
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return folder


@pytest.fixture(scope="module")
def run_dir(real_run_db: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny run's model, tokenizer and tokens (the session's own run stays as it is)."""
    source = Path(real_run_db.removeprefix("sqlite:///")).parent
    out = tmp_path_factory.mktemp("sae-by-path")
    for name in ("lm", "tokens"):
        shutil.copytree(source / name, out / name)
    shutil.copy(source / "tokenizer.json", out / "tokenizer.json")
    trained = next(source.glob("sae_*"))
    tensors = load_file(str(trained / "sae_weights.safetensors"))
    scale = torch.linspace(0.5, 2.0, tensors["W_dec"].shape[0])[:, None]  # non-unit decoder rows
    weights = {
        "W_enc": tensors["W_enc"],
        "W_dec": tensors["W_dec"] * scale,
        "b_enc": tensors["b_enc"],
        "b_dec": tensors["b_dec"],
    }
    saelens_folder(out / "elsewhere" / "my-topk", weights)
    return out


def tiny(run_dir: Path, *argv: str) -> list[str]:
    return [*argv, "--preset", "tiny", "--out-dir", str(run_dir)]


def test_evaluate_analyze_and_browse_an_sae_by_path(run_dir: Path) -> None:
    folder = run_dir / "elsewhere" / "my-topk"
    url = f"sqlite:///{run_dir / 'browse.db'}"
    assert main(tiny(run_dir, "evaluate", "--sae", str(folder), "--eval-tokens", "4096")) == 0
    metrics = json.loads((run_dir / "eval_my-topk" / "eval.json").read_text())
    assert 0 < metrics["l0"] <= K  # TopK with k = 8: at most 8 active latents per token
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]

    argv = tiny(run_dir, "analyze", "--sae", str(folder), "--db", url, "--analysis-tokens", "4096")
    assert main(argv) == 0
    with TestClient(create_app(Settings(database_url=url))) as client:
        runs = {run["slug"]: run for run in client.get("/api/runs").json()["runs"]}
        run = runs["tiny-my-topk"]
        assert (run["variant"], run["n_features"]) == ("topk", 256)
        detail = client.get(run["api_url"]).json()
        assert detail["config"]["sae"]["k"] == K and detail["config"]["sae_path"] == str(folder)
        assert detail["metrics"]["l0"] == pytest.approx(metrics["l0"])
        feature = max(detail["features"]["items"], key=lambda item: item["density"])
        assert client.get(feature["url"]).status_code == 200

        text = "the cat sat on the mat"
        inference = client.get(f"/api/runs/{run['slug']}/inference", params={"text": text}).json()
        assert inference["available"] and inference["tokens"]
        # The browser's features are the SAELens SAE's, read through our loader on the real model.
        model, sae = OneLayerTransformer.load(run_dir / "lm"), load_sae(folder)
        ids = load_tokenizer(run_dir / "tokenizer.json").encode(text).ids
        with torch.no_grad():
            acts = sae.encode(model.mlp_activations(torch.tensor([ids]))[0].float())
        for position, token in enumerate(inference["tokens"]):
            for shown in token["top"]:
                assert shown["activation"] == pytest.approx(float(acts[position, shown["index"]]), rel=1e-4)
            assert len(token["top"]) == min(5, int((acts[position] > 0).sum()))


@pytest.mark.parametrize(
    ("hook", "extra_d_in", "message"),
    [
        ("blocks.0.mlp.hook_post", 1, "reads 129-dimensional inputs but the model's MLP gives 128"),
        ("blocks.0.hook_resid_post", 0, "trained on hook 'blocks.0.hook_resid_post'"),
    ],
)
def test_an_sae_that_does_not_fit_is_refused_before_anything_is_written(
    run_dir: Path, capsys: pytest.CaptureFixture[str], hook: str, extra_d_in: int, message: str
) -> None:
    d_in = 128 + extra_d_in
    weights = {"W_enc": torch.randn(d_in, 16), "W_dec": torch.randn(16, d_in), "b_enc": torch.zeros(16)}
    folder = saelens_folder(
        run_dir / "elsewhere" / f"misfit-{extra_d_in}", {**weights, "b_dec": torch.zeros(d_in)}, hook=hook
    )
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    db = run_dir / f"misfit-{extra_d_in}.db"
    for command in ("evaluate", "analyze"):
        assert main(tiny(run_dir, command, "--sae", str(folder), "--db", f"sqlite:///{db}")) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    assert not db.exists()
