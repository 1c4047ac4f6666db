"""The HTML pages: content, links to their JSON twins, sharing metadata, security headers."""

from __future__ import annotations

import re

import pytest
from appdb import NEURON_RUN, RUNNING_RUN, SAE_RUN
from fastapi.testclient import TestClient

PAGES = [
    ("/", "/api/runs"),
    (f"/runs/{SAE_RUN}", f"/api/runs/{SAE_RUN}"),
    (
        f"/runs/{SAE_RUN}?sort=density&order=desc&page=2",
        f"/api/runs/{SAE_RUN}?sort=density&amp;order=desc&amp;page=2",
    ),
    (f"/runs/{SAE_RUN}/features/5", f"/api/runs/{SAE_RUN}/features/5"),
    ("/search?token=+the", "/api/search?token=+the"),
    (f"/runs/{NEURON_RUN}/inference?text=the+cat", f"/api/runs/{NEURON_RUN}/inference?text=the+cat"),
]


@pytest.mark.parametrize(("path", "twin"), PAGES)
def test_page_links_its_json_twin(client: TestClient, path: str, twin: str) -> None:
    response = client.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert f'<link rel="alternate" type="application/json" href="{twin}">' in response.text
    assert client.get(twin.replace("&amp;", "&")).status_code == 200


def test_security_headers(client: TestClient) -> None:
    headers = client.get(f"/runs/{SAE_RUN}/features/5").headers
    assert headers["content-security-policy"].startswith(
        "default-src 'self'; script-src 'self'; style-src 'self'"
    )
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"]


def test_no_inline_scripts_or_styles(client: TestClient) -> None:
    for path, _ in PAGES:
        html = client.get(path).text
        assert " style=" not in html, path
        for script in re.findall(r"<script[^>]*>", html):
            assert 'src="/static/' in script or 'type="application/json"' in script, script


def test_front_page_greys_unfinished_runs(client: TestClient) -> None:
    html = client.get("/").text
    main, unfinished = html.split('<section class="unfinished">')
    assert f'href="/runs/{SAE_RUN}"' in main and RUNNING_RUN not in main
    assert RUNNING_RUN in unfinished and "running" in unfinished


def test_run_page_keeps_view_state_in_links(client: TestClient) -> None:
    html = client.get(
        f"/runs/{SAE_RUN}", params={"sort": "density", "order": "desc", "q": "synthetic", "size": 5}
    ).text
    assert (
        "sort=density&amp;order=desc&amp;page=2&amp;q=synthetic&amp;size=5" in html
    )  # next page keeps the view
    assert 'aria-sort="descending"' in html
    assert 'data-chart="chart-density"' in html and 'id="chart-training-sae"' in html


def test_feature_page_content(client: TestClient) -> None:
    html = client.get(f"/runs/{SAE_RUN}/features/5").text
    assert (
        '<meta property="og:title" content="Feature 5 of tiny-paper-64: tokens like #5 (synthetic)">' in html
    )
    assert re.search(
        r'<meta property="og:description" content="tokens like #5 \(synthetic\) · density [0-9.]+%', html
    )
    assert "automatic label" in html
    assert re.search(r'<div class="example" id="example-\d+">', html)
    assert re.search(r'<span class="t act-(?:[1-9]|10)[^"]*" title="[0-9.e+-]+" tabindex="0" data-act=', html)
    assert 'class="t act-0' in html
    assert '<script type="application/json" id="chart-activations">' in html
    assert 'src="/static/vendor/plotly.min.js"' in html
    assert f'href="/runs/{SAE_RUN}/features/4"' in html and f'href="/runs/{SAE_RUN}/features/6"' in html
    assert "Interval 3" in html and html.index("Interval 3") < html.index("Interval 0")


def test_neuron_page_says_neuron(client: TestClient) -> None:
    html = client.get(f"/runs/{NEURON_RUN}/features/2").text
    assert "<h1>Neuron 2</h1>" in html and "Nearest neurons" in html


def test_search_page_shows_exact_token_text(client: TestClient) -> None:
    html = client.get("/search", params={"token": " the"}).text
    assert "·the" in html and "&#39; the&#39;" in html
    assert re.search(rf'href="/runs/{SAE_RUN}/features/\d+"', html)
    assert 'value=" the"' in html  # the box keeps the exact query, leading space included


def test_inference_page(client: TestClient) -> None:
    html = client.get(f"/runs/{NEURON_RUN}/inference", params={"text": "the cat sat"}).text
    assert "Top neurons per token" in html and 'class="t act-' in html
    missing = client.get(f"/runs/{RUNNING_RUN}/inference", params={"text": "hi"})
    assert missing.status_code == 200 and "no artifacts" in missing.text


def test_plotly_is_served_locally(client: TestClient) -> None:
    response = client.get("/static/vendor/plotly.min.js")
    assert response.status_code == 200 and len(response.content) > 1_000_000
    assert "max-age" in response.headers["cache-control"]
    for name in ("app.css", "app.js", "charts.js"):
        assert client.get(f"/static/{name}").status_code == 200
