"""Your own model, end to end through the command line: tiny random GPT-2, GPT-NeoX and Llama
models saved to a folder, harvested at two hook points, an SAE trained, evaluated and analysed at
each, and a feature page served by the app; and the bad inputs that must write nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hfdata import FAMILIES, build_model, write_corpus

from app.main import create_app
from app.settings import Settings
from monosemantic.cli import main
from trainer.lm.hf_model import load_tokenizer, token_bytes

HOOKS = {
    "gpt2": ("blocks.1.mlp.hook_post", "blocks.0.hook_resid_post"),
    "gpt_neox": ("blocks.0.attn.hook_z", "blocks.1.mlp.hook_post"),
    "llama": ("blocks.1.hook_resid_pre", "blocks.1.mlp.hook_post"),
}
SIZES = [
    "--preset",
    "tiny",
    "--set",
    "tokenizer.val_fraction=0.2",
    "--set",
    "sae.d_sae=64",
    "--set",
    "sae.variant=topk",
    "--set",
    "sae.k=4",
    "--set",
    "sae.batch_size=256",
    "--set",
    "sae.checkpoint_interval=1000",
    "--set",
    "harvest.n_tokens=8192",
    "--set",
    "harvest.shard_rows=8192",
    "--set",
    "sae.n_tokens=8192",
    "--set",
    "eval.n_tokens=1024",
    "--set",
    "analysis.n_tokens=2048",
    "--set",
    "analysis.context_before=20",
    "--set",
    "analysis.context_after=11",
]


@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Per family: the model folder, the run folder and the database, after the whole chain."""
    root = tmp_path_factory.mktemp("hf-runs")
    corpus = write_corpus(root / "corpus.txt")
    db = f"sqlite:///{root / 'monosemantic.db'}"
    runs: dict[str, Any] = {"db": db}
    for family in FAMILIES:
        model = build_model(family, root / "models" / family)
        out = root / family
        common = [*SIZES, "--out-dir", str(out), "--db", db, "--model", str(model)]
        assert main(["corpus", *common, "--source", str(corpus)]) == 0
        for hook in HOOKS[family]:
            for command in ("harvest", "train-sae", "evaluate", "analyze"):
                assert main([command, *common, "--hook", hook]) == 0, (family, hook, command)
        runs[family] = {"model": model, "out": out}
    return runs


@pytest.fixture(scope="module")
def client(hf_runs: dict[str, Any]) -> Any:
    with TestClient(create_app(Settings(database_url=hf_runs["db"]))) as test_client:
        yield test_client


def test_each_hook_has_its_own_activations_sae_and_metrics(hf_runs: dict[str, Any]) -> None:
    for family in FAMILIES:
        out = hf_runs[family]["out"]
        widths = []
        for hook in HOOKS[family]:
            manifest = json.loads((out / "activations" / hook / "manifest.json").read_text())
            assert manifest["hook"] == hook and manifest["n_rows"] == 8192
            acts = np.load(out / "activations" / hook / manifest["shards"][0])
            assert acts.shape == (8192, manifest["d_in"]) and np.isfinite(acts).all() and acts.std() > 0
            widths.append(manifest["d_in"])
            metrics = json.loads((out / f"sae_{hook}_topk_64" / "eval.json").read_text())
            assert metrics["hook"] == hook and metrics["n_tokens"] >= 1024
            # Random models: the ablations cost loss, and a k=4 SAE recovers part of it.
            assert metrics["ce_zero_ablation"] != metrics["ce_clean"]
            assert metrics["ce_mean_ablation"] != metrics["ce_clean"]
            assert metrics["l0"] <= 4 + 1e-6 and 0 < metrics["fvu"] < 1.5
        assert len(set(widths)) == 2 or "mlp.hook_post" not in "".join(HOOKS[family])


def test_runs_in_the_database(client: TestClient) -> None:
    """An SAE run per model and hook, and a neuron run for the MLP hooks only, named after the
    model's folder."""
    runs = {run["slug"]: run for run in client.get("/api/runs").json()["runs"]}
    expected = {f"{family}-{hook}-topk-64": ("sae", family) for family in FAMILIES for hook in HOOKS[family]}
    expected |= {
        f"{family}-{hook}-neurons": ("neurons", family)
        for family in FAMILIES
        for hook in HOOKS[family]
        if hook.endswith("mlp.hook_post")
    }
    assert {slug: (run["kind"], run["model_name"]) for slug, run in runs.items()} == expected


def test_a_feature_page_of_the_tiny_gpt2(client: TestClient, hf_runs: dict[str, Any]) -> None:
    """Examples in the model's own tokens, the direct-path note, HTML and its JSON twin."""
    folder = hf_runs["gpt2"]["model"]
    table = token_bytes(load_tokenizer(str(folder)), 10_000)
    for hook, path in (
        ("blocks.1.mlp.hook_post", "MLP's output projection"),
        ("blocks.0.hook_resid_post", ""),
    ):
        run = f"/runs/gpt2-{hook}-topk-64"
        listing = client.get(f"/api{run}?sort=density&order=desc").json()
        index = listing["features"]["items"][0]["index"]  # the densest: it has examples
        page, twin = client.get(f"{run}/features/{index}"), client.get(f"/api{run}/features/{index}")
        assert page.status_code == twin.status_code == 200
        feature = twin.json()
        assert (
            "Direct-path approximation" in feature["logit_effects_note"]
            and path in feature["logit_effects_note"]
        )
        assert feature["logit_effects_note"] in page.text.replace("&#39;", "'")
        assert feature["top_examples"], "the densest feature has examples"
        example = feature["top_examples"][0]
        spelled = [table[i].decode("utf-8", "replace") for i in example["token_ids"]]
        assert all(max(ids) < 320 for ids in [example["token_ids"]])  # the model's vocabulary
        assert len(example["tokens"]) == len(spelled)
        assert len(feature["logit_positive"]) == 10


@pytest.mark.parametrize(
    "argv, message",
    [
        (["harvest", "--hook", "blocks.9.mlp.hook_post"], "valid hooks: blocks.0.hook_resid_pre, "),
        (["harvest"], "--hook is required with --model; valid hooks: "),
        (["demo", "--hook", "blocks.0.mlp.hook_pre", "--no-serve"], "does not exist in this gpt2 model"),
    ],
)
def test_bad_hook_is_one_line_and_writes_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], hf_runs: dict[str, Any]
) -> None:
    out = tmp_path / "never"
    code = main([*argv, "--preset", "tiny", "--out-dir", str(out), "--model", str(hf_runs["gpt2"]["model"])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_model_folder_without_a_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = build_model("gpt2", tmp_path / "bare", with_tokenizer=False)
    out = tmp_path / "never"
    argv = ["corpus", "--preset", "tiny", "--out-dir", str(out), "--model", str(folder)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "has no usable tokenizer" in err and "\n" not in err
    assert not out.exists()


def test_corpus_tokenised_for_another_model_is_refused(
    hf_runs: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out, other = hf_runs["gpt2"]["out"], hf_runs["llama"]["model"]
    before = {p: p.read_bytes() for p in out.iterdir() if p.is_file()}
    argv = ["harvest", "--preset", "tiny", "--out-dir", str(out), "--model", str(other)]
    assert main([*argv, "--hook", "blocks.0.hook_resid_pre"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"is tokenised for {hf_runs['gpt2']['model']}" in err and "monosemantic corpus --model" in err
    assert {p: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


# ---------------------------------------------------------------------------- live pages

TEXT = "The cat sat on the mat because 東京 42"


def _hook_activations(folder: Path, hook: str, text: str, sae_dir: Path | None) -> tuple[list[int], Any]:
    """What the live pages must show, computed here without the app: the model's tokens for the
    text and the activations at the hook (through the SAE, for an SAE run)."""
    import torch

    from trainer.lm.hf_model import load_hooked
    from trainer.sae import SparseAutoencoder

    ids = load_tokenizer(str(folder)).backend_tokenizer.encode(text, add_special_tokens=False).ids
    lm = load_hooked(str(folder), hook, n_ctx=64)
    with torch.no_grad():
        acts = lm.activations(torch.tensor([ids]))[0].float()
        if sae_dir is not None:
            acts = SparseAutoencoder.load(sae_dir).encode(acts)
    return ids, acts


@pytest.mark.parametrize(
    ("slug", "hook", "sae"),
    [
        ("gpt2-blocks.1.mlp.hook_post-topk-64", "blocks.1.mlp.hook_post", True),
        ("gpt2-blocks.0.hook_resid_post-topk-64", "blocks.0.hook_resid_post", True),
        ("gpt2-blocks.1.mlp.hook_post-neurons", "blocks.1.mlp.hook_post", False),
    ],
)
def test_inference_on_the_tiny_gpt2(
    client: TestClient, hf_runs: dict[str, Any], slug: str, hook: str, sae: bool
) -> None:
    """The inference page runs the run's own transformers model at its hook (and its SAE): the
    model's tokens, and every shown activation equal to one computed here."""
    out, folder = hf_runs["gpt2"]["out"], hf_runs["gpt2"]["model"]
    body = client.get(f"/api/runs/{slug}/inference", params={"text": TEXT}).json()
    assert body["available"], body["message"]
    ids, acts = _hook_activations(folder, hook, TEXT, out / f"sae_{hook}_topk_64" if sae else None)
    assert [t["token"]["id"] for t in body["tokens"]] == ids
    # Byte-level pieces: a token may hold part of a character, so only the ASCII part reads back.
    assert "".join(t["token"]["text"] for t in body["tokens"]).startswith("The cat sat on the mat because ")
    assert any(t["top"] for t in body["tokens"])
    for position, token in enumerate(body["tokens"]):
        for shown in token["top"]:
            assert shown["activation"] == pytest.approx(
                float(acts[position, shown["index"]]), rel=1e-3, abs=1e-4
            )
        assert token["feature_activation"] == pytest.approx(
            float(acts[position, body["feature"]]), rel=1e-3, abs=1e-4
        )
    page = client.get(f"/runs/{slug}/inference", params={"text": TEXT})
    assert page.status_code == 200 and "Top " in page.text and "東京" in page.text


def test_steering_the_tiny_gpt2(client: TestClient, hf_runs: dict[str, Any]) -> None:
    """Pinning a feature at the hook changes what the model writes; its unpinned activation is the
    SAE's on the model's own activations at the prompt's last token."""
    hook = "blocks.1.mlp.hook_post"
    slug = f"gpt2-{hook}-topk-64"
    inferred = client.get(f"/api/runs/{slug}/inference", params={"text": TEXT}).json()
    feature = inferred["feature"]
    params = {"text": TEXT, "feature": feature, "value": 200, "tokens": 6}
    response = client.get(f"/api/runs/{slug}/steer", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["available"] and len(body["unpinned"]["tokens"]) == len(body["pinned"]["tokens"]) == 6
    _, acts = _hook_activations(
        hf_runs["gpt2"]["model"], hook, TEXT, hf_runs["gpt2"]["out"] / f"sae_{hook}_topk_64"
    )
    assert body["activation"] == pytest.approx(float(acts[-1, feature]), rel=1e-3, abs=1e-4)
    unpinned = [n["logit"] for n in body["unpinned"]["next_tokens"]]
    pinned = [n["logit"] for n in body["pinned"]["next_tokens"]]
    assert unpinned != pinned, "pinning a feature at 200 moved no logit"
    page = client.get(f"/runs/{slug}/steer", params=params)
    assert page.status_code == 200 and 'id="pinned"' in page.text


@pytest.mark.parametrize("what", ["model", "sae"])
def test_a_run_whose_folder_is_gone(client: TestClient, hf_runs: dict[str, Any], what: str) -> None:
    """A 503 naming the missing folder, page and JSON, for inference and steering; not a 500."""
    hook = "blocks.0.hook_resid_post"
    slug = f"gpt2-{hook}-topk-64"
    folder = hf_runs["gpt2"]["model"] if what == "model" else hf_runs["gpt2"]["out"] / f"sae_{hook}_topk_64"
    moved = folder.with_name(folder.name + ".moved")
    folder.rename(moved)  # a model kept in memory from earlier tests must not answer either
    try:
        for path, extra in (("inference", {}), ("steer", {"feature": 1})):
            params = {"text": TEXT, **extra}
            api = client.get(f"/api/runs/{slug}/{path}", params=params)
            assert api.status_code == 503 and str(folder) in api.json()["detail"], api.text
            page = client.get(f"/runs/{slug}/{path}", params=params)
            assert page.status_code == 503 and str(folder) in page.text and "Model unavailable" in page.text
    finally:
        moved.rename(folder)
    assert client.get(f"/api/runs/{slug}/inference", params={"text": TEXT}).json()["available"]
