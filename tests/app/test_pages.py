"""The HTML pages: content, links to their JSON twins, sharing metadata, security headers."""

from __future__ import annotations

import re

import pytest
from appdb import NEURON_RUN, RUNNING_RUN, SAE_RUN
from fastapi.testclient import TestClient
from markupsafe import escape

from app.queries.runs import visible

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
    strips = re.findall(r'<span class="toks">((?:<span[^>]*>[^<]*</span>)+)</span>', html)
    assert strips and html.count('<span class="toks">') == len(strips)  # every strip: token spans only
    tokens = [span for strip in strips for span in re.findall(r"<span[^>]*>[^<]*</span>", strip)]
    firing = re.compile(r'<span class="a(?:[1-9]|10)(?: f)?" data-act="[0-9.e+-]+" tabindex="0">[^<]*</span>')
    assert any(firing.fullmatch(t) for t in tokens)  # shaded, its activation for the tooltip, focusable
    assert any(re.fullmatch(r"<span>[^<]+</span>", t) for t in tokens)  # not firing: a bare span
    assert all(firing.fullmatch(t) or re.fullmatch(r'<span(?: class="f")?>[^<]+</span>', t) for t in tokens)
    assert sum('class="a' in t and " f" in t for t in tokens) >= 1  # the focus token is marked
    assert '<script type="application/json" id="chart-activations">' in html
    assert 'src="/static/vendor/plotly.min.js"' in html
    assert f'href="/runs/{SAE_RUN}/features/4"' in html and f'href="/runs/{SAE_RUN}/features/6"' in html
    assert "Interval 3" in html and html.index("Interval 3") < html.index("Interval 0")


def test_token_strip_markup() -> None:
    """A bare span for a token that does not fire; shading, activation and tabindex for one that
    does; the activation alone for a negative one (a GELU neuron's); f for the focus token."""
    from markupsafe import Markup

    from app.pages.templating import token_spans

    strip = token_spans(["<b>", "·a", "b", "c", "&", "d"], [0.0, 2.0, -0.5, 0.0, 0.3, 1.1], 2.0, focus=3)
    assert isinstance(strip, Markup)
    assert strip == (
        "<span>&lt;b&gt;</span>"
        '<span class="a10" data-act="2" tabindex="0">·a</span>'
        '<span data-act="-0.5">b</span>'
        '<span class="f">c</span>'
        '<span class="a2" data-act="0.3" tabindex="0">&amp;</span>'
        '<span class="a6" data-act="1.1" tabindex="0">d</span>'
    )
    assert token_spans(["x", "y"], [0.0, 1.0], 1.0, focus=1) == (
        '<span>x</span><span class="a10 f" data-act="1" tabindex="0">y</span>'
    )
    assert token_spans(["x", "y", "z"], [0.5, 0.0], 0.0) == '<span data-act="0.5">x</span><span>y</span>'


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
    assert "Top neurons per token" in html
    strip = re.search(r'<div class="example inference-strip"><span class="toks">(.*?)</span></div>', html)
    assert strip, "the chosen neuron's strip over the text"
    spans = re.findall(r"<span[^>]*>([^<]*)</span>", strip.group(1))
    assert len(spans) >= 3 and "".join(spans) == "the·cat·sat"  # a span per token, spaces shown
    missing = client.get(f"/runs/{RUNNING_RUN}/inference", params={"text": "hi"})
    assert missing.status_code == 200 and "no artifacts" in missing.text


def test_inference_page_shows_labels_beside_feature_numbers(client: TestClient) -> None:
    """Each feature in the per-token table carries its label as text, not only as a tooltip."""
    params = {"text": "the cat sat on the mat"}
    data = client.get(f"/api/runs/{SAE_RUN}/inference", params=params).json()
    labelled = [f for t in data["tokens"] for f in t["top"] if f["label"]]
    assert labelled, "some firing feature has a label"
    html = client.get(f"/runs/{SAE_RUN}/inference", params=params).text
    for feature in labelled:
        shown = (
            f'>{feature["index"]}</a> <bdi class="feature-label">{escape(visible(feature["label"]))}</bdi>'
        )
        assert shown in html


def test_plotly_is_served_locally(client: TestClient) -> None:
    response = client.get("/static/vendor/plotly.min.js")
    assert response.status_code == 200 and len(response.content) > 1_000_000
    assert "max-age" in response.headers["cache-control"]
    for name in ("app.css", "app.js", "charts.js"):
        assert client.get(f"/static/{name}").status_code == 200


def test_own_static_files_are_linked_with_the_app_version(client: TestClient) -> None:
    """A deploy that changes the CSS or JS changes their URLs, so no browser keeps the old ones."""
    version = client.app.state.app_version  # type: ignore[attr-defined]
    html = client.get(f"/runs/{SAE_RUN}/features/5").text
    for name in ("app.css", "app.js", "charts.js"):
        assert f'"/static/{name}?v={version}"' in html
        assert client.get(f"/static/{name}?v={version}").status_code == 200


def test_static_files_are_gzipped_for_clients_that_accept_it(client: TestClient) -> None:
    from app.main import PLOTLY_DIR

    original = (PLOTLY_DIR / "plotly.min.js").read_bytes()
    zipped = client.get("/static/vendor/plotly.min.js", headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip" and zipped.content == original
    assert int(zipped.headers["content-length"]) < len(original) / 2  # the bytes on the wire
    plain = client.get("/static/vendor/plotly.min.js", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == original
    assert plain.headers["vary"] == zipped.headers["vary"] == "Accept-Encoding"
    again = client.get(
        "/static/app.css", headers={"if-none-match": client.get("/static/app.css").headers["etag"]}
    )
    assert again.status_code == 304
