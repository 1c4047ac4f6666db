"""Every page's JSON twin under /api/, through the in-process ASGI client."""

from __future__ import annotations

from appdb import N_NEURONS, N_SAE, NEURON_RUN, RUNNING_RUN, SAE_RUN
from fastapi.testclient import TestClient

from trainer.store.schema import SCHEMA_VERSION


def test_runs_lists_complete_runs_and_running_ones_apart(client: TestClient) -> None:
    body = client.get("/api/runs").json()
    assert {r["slug"] for r in body["runs"]} == {SAE_RUN, NEURON_RUN}
    assert [r["slug"] for r in body["unfinished"]] == [RUNNING_RUN]
    sae = next(r for r in body["runs"] if r["slug"] == SAE_RUN)
    assert sae["headline"] == {"l0": 12.5, "dead_fraction": 0.03, "fvu": 0.21, "ce_loss_recovered": 0.87}
    assert sae["url"] == f"/runs/{SAE_RUN}" and sae["api_url"] == f"/api/runs/{SAE_RUN}"


def test_run_detail_pages_sorts_and_filters(client: TestClient) -> None:
    body = client.get(f"/api/runs/{SAE_RUN}", params={"size": 10, "page": 2}).json()
    features = body["features"]
    assert features["total"] == N_SAE and features["n_pages"] == 7
    assert [f["index"] for f in features["items"]] == list(range(10, 20))
    assert body["density_histogram"]["n_zero"] == 2 and body["training_log"]["sae"]

    by_density = client.get(f"/api/runs/{SAE_RUN}", params={"sort": "density", "order": "desc"}).json()
    densities = [f["density"] for f in by_density["features"]["items"]]
    assert densities == sorted(densities, reverse=True)

    labelled = client.get(f"/api/runs/{SAE_RUN}", params={"q": "#12 "}).json()["features"]
    assert [f["index"] for f in labelled["items"]] == [12]

    ranged = client.get(f"/api/runs/{SAE_RUN}", params={"density_min": 1e-3, "density_max": 1e-2}).json()[
        "features"
    ]
    assert ranged["items"] and all(1e-3 <= f["density"] <= 1e-2 for f in ranged["items"])

    on_token = client.get(f"/api/runs/{SAE_RUN}", params={"token": "the"}).json()["features"]
    assert 0 < on_token["total"] < N_SAE


def test_a_page_past_the_end_is_empty_not_an_error(client: TestClient) -> None:
    body = client.get(f"/api/runs/{SAE_RUN}", params={"page": 999}).json()
    assert body["features"]["items"] == [] and body["features"]["total"] == N_SAE


def test_feature_has_everything_its_page_shows(client: TestClient) -> None:
    body = client.get(f"/api/runs/{SAE_RUN}/features/5").json()
    assert body["unit"] == "Feature" and body["index"] == 5 and body["label_source"] == "auto"
    assert len(body["top_examples"]) == 5
    assert [band["band"] for band in body["interval_bands"]] == [3, 2, 1, 0]  # highest first
    example = body["top_examples"][0]
    assert len(example["tokens"]) == len(example["token_ids"]) == len(example["activations"])
    assert example["url"] == f"/runs/{SAE_RUN}/features/5#example-{example['id']}"
    assert len(body["logit_positive"]) == 5 and body["logit_positive"][0]["token"]["quoted"]
    assert [n["index"] for n in body["neighbours"]] == [6, 7, 8] and body["neighbours"][0]["label"]
    assert (body["previous_index"], body["next_index"]) == (4, 6)
    first = client.get(f"/api/runs/{SAE_RUN}/features/0").json()
    assert first["previous_index"] is None


def test_neuron_run_says_neuron(client: TestClient) -> None:
    body = client.get(f"/api/runs/{NEURON_RUN}/features/{N_NEURONS - 1}").json()
    assert body["unit"] == "Neuron" and body["next_index"] is None


def test_search_tells_the_and_space_the_apart(client: TestClient) -> None:
    spaced = client.get("/api/search", params={"token": " the"}).json()
    bare = client.get("/api/search", params={"token": "the"}).json()
    assert {m["token"]["text"] for m in spaced["matches"]} == {" the"}
    assert {m["token"]["quoted"] for m in spaced["matches"]} == {"' the'"}
    assert {m["token"]["display"] for m in spaced["matches"]} == {"·the"}
    assert {m["token"]["text"] for m in bare["matches"]} == {"the"}
    assert {m["run"] for m in spaced["matches"]} == {SAE_RUN, NEURON_RUN}  # all complete runs
    values = [h["mean_activation"] for h in spaced["hits"]]
    assert values and values == sorted(values, reverse=True)
    assert {h["kind"] for h in spaced["hits"]} == {"sae", "neurons"}


def test_search_prefix_and_one_run(client: TestClient) -> None:
    body = client.get("/api/search", params={"token": "th", "mode": "prefix", "run": NEURON_RUN}).json()
    texts = {m["token"]["text"] for m in body["matches"]}
    assert "the" in texts and all(t.startswith("th") for t in texts)
    assert {h["run"] for h in body["hits"]} == {NEURON_RUN}


def test_search_newline_and_invalid_utf8_tokens(client: TestClient) -> None:
    newline = client.get("/api/search", params={"token": "\n"}).json()["matches"][0]["token"]
    assert newline["display"] == "↵" and newline["quoted"] == "'\\n'"
    # A lone byte of a multi-byte character: stored with U+FFFD, quoted as its raw bytes.
    broken = client.get("/api/search", params={"token": "\ufffd", "run": SAE_RUN}).json()["matches"]
    assert broken and all(m["token"]["quoted"].startswith("b'\\x") for m in broken)


def test_search_without_token_is_empty(client: TestClient) -> None:
    assert client.get("/api/search").json()["hits"] == []


def test_inference_on_a_neuron_run(client: TestClient) -> None:
    body = client.get(f"/api/runs/{NEURON_RUN}/inference", params={"text": "the cat sat on the mat"}).json()
    assert body["available"] and body["n_ctx"] == 16 and not body["truncated"]
    assert "".join(t["token"]["text"] for t in body["tokens"]) == "the cat sat on the mat"
    assert body["feature"] is not None and all(t["feature_activation"] is not None for t in body["tokens"])
    assert all(0 <= f["index"] < N_NEURONS for t in body["tokens"] for f in t["top"])


def test_inference_on_an_sae_run_truncates_to_context(client: TestClient) -> None:
    body = client.get(f"/api/runs/{SAE_RUN}/inference", params={"text": "the cat " * 40, "feature": 3}).json()
    assert body["available"] and body["truncated"] and len(body["tokens"]) == 16
    assert body["feature"] == 3 and "cut" in body["message"]


def test_inference_without_artifacts_says_so(client: TestClient) -> None:
    body = client.get(f"/api/runs/{RUNNING_RUN}/inference", params={"text": "hello"}).json()
    assert body["available"] is False and "no artifacts" in body["message"]


def test_health_and_openapi(client: TestClient) -> None:
    health = client.get("/-/health").json()
    assert (health["status"], health["schema_version"]) == ("ok", SCHEMA_VERSION)
    live = health["live"]  # the live pool's state: nothing admitted while nobody asks
    assert live["jobs_admitted"] == live["jobs_running"] == 0 and live["max_jobs"] >= 1
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/runs",
        "/api/runs/{run}",
        "/api/runs/{run}/features/{index}",
        "/api/search",
        "/api/runs/{run}/inference",
    ):
        assert path in paths
    assert "/runs/{run}" not in paths  # HTML pages stay out of the API schema


def test_inference_blank_feature_box_means_strongest(client: TestClient) -> None:
    """The page's form submits an empty box; the JSON API is no form, so there empty is 422."""
    page = client.get(f"/runs/{NEURON_RUN}/inference", params={"text": "the cat", "feature": ""})
    assert page.status_code == 200 and "Top neurons per token" in page.text
    response = client.get(f"/api/runs/{NEURON_RUN}/inference", params={"text": "the cat", "feature": ""})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "feature"]
    assert client.get(f"/runs/{SAE_RUN}", params={"density_min": "", "density_max": ""}).status_code == 200
