"""Pinning a feature while the model writes: the replacement, the page, its JSON twin, bad input."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from appdb import N_NEURONS, N_SAE, NEURON_RUN, RUNNING_RUN, SAE_RUN, FixtureDB
from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import select

from trainer.config import SAEConfig
from trainer.lm.steering import pin_feature, pin_neuron
from trainer.sae import SparseAutoencoder
from trainer.store.schema import Token, make_engine

PROMPT = "the cat sat on the"


def token_bytes(db: FixtureDB, token_ids: list[int]) -> bytes:
    """The exact bytes of these tokens (of the fixture's vocabulary, shared by its runs)."""
    engine = make_engine(db.url, read_only=True)
    with engine.connect() as conn:
        raw = dict(conn.execute(select(Token.token_id, Token.raw)).all())  # the same in every run
    engine.dispose()
    return b"".join(raw[t] for t in token_ids)


def steer(client: TestClient, run: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/runs/{run}/steer", params={"text": PROMPT, "tokens": 6, **params})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _next(continuation: dict[str, Any]) -> list[tuple[int, float]]:
    return [(n["token"]["id"], round(n["logit"], 4)) for n in continuation["next_tokens"]]


# ----------------------------------------------------------------------------- the replacement


def test_pinning_a_feature_to_its_own_activation_changes_nothing() -> None:
    sae = SparseAutoencoder(SAEConfig(d_in=N_NEURONS, d_sae=N_SAE, batch_size=8, n_tokens=8)).eval()
    with torch.no_grad():
        sae.b_enc.add_(0.05)  # so that features fire
        x = torch.relu(torch.randn(1, 1, N_NEURONS, generator=torch.Generator().manual_seed(0)))
        f = sae.encode(x[0])
        index = int(f[0].argmax())
        assert f[0, index] > 0
        # The reconstruction is not exact, so rebuilding x from the SAE would not be a no-op.
        assert not torch.allclose(sae.decode(f), x[0], atol=1e-3)
        same = pin_feature(x, sae, index, float(f[0, index]))
        assert same.shape == x.shape and torch.allclose(same, x, atol=1e-6)
        # Any other value moves x along that feature's decoder row only.
        moved = pin_feature(x, sae, index, float(f[0, index]) + 3.0)
        assert torch.allclose(moved - x, 3.0 * sae.W_dec[index], atol=1e-5)


def test_pinning_a_neuron_sets_only_that_neuron() -> None:
    x = torch.rand(1, 4, N_NEURONS)
    pinned = pin_neuron(x, 7, 2.5)
    assert torch.all(pinned[..., 7] == 2.5)
    assert torch.equal(
        torch.cat([pinned[..., :7], pinned[..., 8:]], -1), torch.cat([x[..., :7], x[..., 8:]], -1)
    )
    assert not torch.equal(x[..., 7], pinned[..., 7])  # the input is left alone


# ----------------------------------------------------------------------------- the JSON twin


@pytest.mark.parametrize(("run", "n_features"), [(SAE_RUN, N_SAE), (NEURON_RUN, N_NEURONS)])
def test_a_large_pin_changes_what_the_model_writes(
    client: TestClient, fixture_db: FixtureDB, run: str, n_features: int
) -> None:
    body = steer(client, run, feature=n_features - 1, value=1000)
    assert (
        body["available"] and body["n_ctx"] == 16 and body["value"] == 1000 and not body["value_is_default"]
    )
    assert "".join(t["text"] for t in body["prompt"]) == PROMPT
    unpinned, pinned = body["unpinned"], body["pinned"]
    assert len(unpinned["tokens"]) == len(pinned["tokens"]) == 6
    # The text is the generated tokens' bytes decoded together (a character may span tokens).
    assert unpinned["text"] == token_bytes(fixture_db, [t["id"] for t in unpinned["tokens"]]).decode(
        "utf-8", "replace"
    )
    assert len(unpinned["next_tokens"]) == len(pinned["next_tokens"]) == 10
    assert _next(unpinned) != _next(pinned)
    for continuation in (unpinned, pinned):
        probabilities = [n["probability"] for n in continuation["next_tokens"]]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
        # Greedy: the first written token is the top next token.
        assert continuation["tokens"][0]["id"] == continuation["next_tokens"][0]["token"]["id"]


def test_greedy_writing_is_deterministic_and_runs_past_the_context(client: TestClient) -> None:
    params = {"feature": 3, "value": 40, "tokens": 24}  # the prompt and 24 tokens exceed n_ctx 16
    first, second = steer(client, SAE_RUN, **params), steer(client, SAE_RUN, **params)
    assert first == second
    assert len(first["pinned"]["tokens"]) == 24 and not first["truncated"]


def test_a_long_prompt_is_read_from_its_end(client: TestClient) -> None:
    body = steer(client, NEURON_RUN, text="the cat " * 40, feature=1, value=3)
    assert body["truncated"] and "last 16 tokens" in body["message"]
    assert len(body["pinned"]["tokens"]) == 6


def test_the_default_value_is_a_multiple_of_the_max_activation(client: TestClient) -> None:
    feature = client.get(f"/api/runs/{SAE_RUN}/features/4").json()
    body = steer(client, SAE_RUN, feature=4)
    assert body["value_is_default"] and body["default_multiple"] == 5
    assert body["value"] == pytest.approx(5 * feature["max_activation"]) and body["pinned"]["tokens"]
    # The page's form sends its empty value box: the default there too (the JSON API says 422).
    page = client.get(f"/runs/{SAE_RUN}/steer", params={"text": PROMPT, "feature": 4, "value": ""}).text
    assert "(default: 5× its max activation)" in page
    assert (
        client.get(
            f"/api/runs/{SAE_RUN}/steer", params={"text": PROMPT, "feature": 4, "value": ""}
        ).status_code
        == 422
    )


def test_without_text_or_artifacts_nothing_is_written(client: TestClient) -> None:
    empty = client.get(f"/runs/{SAE_RUN}/steer", params={"feature": 2})
    assert empty.status_code == 200 and 'id="pinned"' not in empty.text and "the last 16 tokens" in empty.text
    missing = steer(client, RUNNING_RUN, feature=2)
    assert missing["available"] is False and "no artifacts" in missing["message"]
    page = client.get(f"/runs/{RUNNING_RUN}/steer", params={"text": "hi", "feature": 2})
    assert page.status_code == 200 and "no artifacts" in page.text


def test_openapi_documents_the_twin_only(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/runs/{run}/steer" in paths and "/runs/{run}/steer" not in paths
    assert paths["/api/runs/{run}/steer"]["get"]["description"]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("feature=2&value=1001", "value"),
        ("feature=2&value=-5000", "value"),
        ("feature=2&value=nan", "value"),
        ("feature=2&value=lots", "value"),
        ("feature=2&tokens=0", "tokens"),
        ("feature=2&tokens=65", "tokens"),
        ("feature=2&tokens=x", "tokens"),
        ("feature=-1", "feature"),
        ("feature=two", "feature"),
        ("feature=2&text=" + "a" * 2001, "text"),
    ],
)
def test_bad_params_are_422_with_a_message(client: TestClient, query: str, param: str) -> None:
    html = client.get(f"/runs/{SAE_RUN}/steer?{query}")
    assert html.status_code == 422 and "Bad request" in html.text and param in html.text
    api = client.get(f"/api/runs/{SAE_RUN}/steer?{query}")
    assert api.status_code == 422
    assert any(param in [str(p) for p in error["loc"]] for error in api.json()["detail"])


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (f"/runs/{SAE_RUN}/steer?text=hi&feature={N_SAE}", f"no feature {N_SAE}"),
        ("/runs/nope/steer?text=hi&feature=1", "no run 'nope'"),
    ],
)
def test_unknown_features_and_runs_are_404(client: TestClient, path: str, message: str) -> None:
    html = client.get(path)
    assert html.status_code == 404 and message in html.text.replace("&#39;", "'")
    api = client.get("/api" + path)
    assert api.status_code == 404 and message in api.json()["detail"]


# ----------------------------------------------------------------------------- the page


def test_page_shows_both_continuations_escaped(client: TestClient) -> None:
    hostile = "<script>alert(1)</script> the cat"
    response = client.get(f"/runs/{SAE_RUN}/steer", params={"text": hostile, "feature": 5, "value": 200})
    html = response.text
    assert response.status_code == 200 and "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; the cat</textarea>" in html
    body = steer(client, SAE_RUN, text=hostile, feature=5, value=200, tokens=24)
    for kind in ("unpinned", "pinned"):
        shown = re.search(rf'<p class="steer-out" id="{kind}"><span class="gen-toks">(.*?)</span></p>', html)
        assert shown, kind
        spans = re.findall(r"<span [^>]*>([^<]*)</span>", shown.group(1))
        assert len(spans) == 24 and spans == [escape(t["display"]) for t in body[kind]["tokens"]]
    assert "Without the pin" in html and "With the pin" in html
    for script in re.findall(r"<script[^>]*>", html):
        assert 'src="/static/' in script, script
    assert " style=" not in html
    assert f'<link rel="alternate" type="application/json" href="/api/runs/{SAE_RUN}/steer?' in html


def test_feature_and_inference_pages_link_to_the_steer_page(client: TestClient) -> None:
    html = client.get(f"/runs/{NEURON_RUN}/features/5").text
    link = re.search(r'<a href="([^"]+)">Pin this neuron while the model writes</a>', html)
    assert link and link.group(1) == f"/runs/{NEURON_RUN}/steer?feature=5"
    page = client.get(link.group(1))
    assert (
        page.status_code == 200
        and 'name="feature" type="number" min="0" max="31" required value="5"' in page.text
    )
    inference = client.get(f"/runs/{SAE_RUN}/inference", params={"text": "the cat", "feature": 2}).text
    assert f'href="/runs/{SAE_RUN}/steer?text=the+cat&amp;feature=2"' in inference


def test_steering_with_the_real_sae(real_client: TestClient) -> None:
    run = next(r for r in real_client.get("/api/runs").json()["runs"] if r["kind"] == "sae")
    detail = real_client.get(run["api_url"], params={"sort": "max_activation", "order": "desc"}).json()
    index = detail["features"]["items"][0]["index"]
    body = real_client.get(
        f"{run['api_url']}/steer", params={"text": "the cat sat on the", "feature": index, "tokens": 12}
    ).json()
    assert body["available"] and body["value_is_default"], body["message"]
    assert _next(body["unpinned"]) != _next(body["pinned"])
    page = real_client.get(f"{run['url']}/steer", params={"text": "the cat sat on the", "feature": index})
    assert page.status_code == 200 and 'id="pinned"' in page.text
