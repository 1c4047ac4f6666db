"""Hostile corpus text and labels: escaped everywhere, and invisible characters made visible."""

from __future__ import annotations

import re

import pytest
from appdb import HOSTILE_RUN, XSS_PAYLOADS
from fastapi.testclient import TestClient

PAGES = [
    "/",
    f"/runs/{HOSTILE_RUN}",
    f"/runs/{HOSTILE_RUN}/features/0",
    f"/runs/{HOSTILE_RUN}/features/1",
    f"/runs/{HOSTILE_RUN}?q=%3Cscript",
    "/search?token=%3Cscript%3Ealert(1)%3C/script%3E",
    "/search?token=%22&mode=prefix",
    "/search?token=javascript:alert(1)",
    f"/runs/{HOSTILE_RUN}/features/999",
    "/runs/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
]


@pytest.mark.parametrize("path", PAGES)
def test_payloads_never_appear_unescaped(hostile_client: TestClient, path: str) -> None:
    html = hostile_client.get(path).text
    for payload in ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '"><img'):
        assert payload not in html, (path, payload)
    assert 'href="javascript:' not in html and "\u202e" not in html and "\u200b" not in html


def test_payloads_are_shown_as_text(hostile_client: TestClient) -> None:
    html = hostile_client.get(f"/runs/{HOSTILE_RUN}/features/0").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the label and the token, as text
    strips = re.findall(r'<span class="toks">(.*?)</span></div>', html)
    assert strips and html.count('<span class="toks">') == len(strips)
    for strip in strips:  # every example starts with the payload tokens, each a span of text
        spans = re.findall(r"<span[^>]*>[^<]*</span>", strip)
        assert "".join(spans) == strip, strip
        assert re.fullmatch(r"<span[^>]*>&lt;script&gt;alert\(1\)&lt;/script&gt;</span>", spans[0])
        assert re.fullmatch(r"<span[^>]*>&#34;&gt;&lt;img·src=x·onerror=alert\(1\)&gt;</span>", spans[1])
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;U+202E&gt;evil&lt;U+202C&gt;" in html  # the RTL override cannot reorder the page
    assert "zero&lt;U+200B&gt;width" in html


def test_json_keeps_exact_text(hostile_client: TestClient) -> None:
    body = hostile_client.get("/api/search", params={"token": XSS_PAYLOADS[3]}).json()
    token = body["matches"][0]["token"]
    assert token["text"] == XSS_PAYLOADS[3]  # exact text in JSON, visible form for display
    assert token["display"] == "<U+202E>evil<U+202C>"
    assert hostile_client.get(f"/api/runs/{HOSTILE_RUN}/features/0").json()["label"] == XSS_PAYLOADS[0]
