"""A picture of a feature page for the README: serve a database and capture one page with headless
Chromium (Debian's, as the browser tests use).

    .venv/bin/python tools/screenshot.py --db sqlite:///runs/demo/monosemantic.db --run demo \
        [--feature N] [--out docs/feature_page.png]

Without --feature, the densest feature of the run is shown.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def serve(db: str) -> tuple[object, str]:
    """The app on a free loopback port in a thread (uvicorn), as `monosemantic serve` runs it."""
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(Settings(database_url=db)), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("the app did not start within 30 s")
        time.sleep(0.1)
    return server, f"http://127.0.0.1:{port}"


def capture(base: str, slug: str, out: Path, feature: int | None = None) -> str:
    """Screenshot a feature page of run `slug` (the densest feature unless given); returns its URL."""
    import httpx
    from playwright.sync_api import sync_playwright

    if feature is None:
        listing = httpx.get(f"{base}/api/runs/{slug}", params={"sort": "density", "order": "desc"})
        if listing.status_code != 200:
            raise SystemExit(f"run {slug!r}: the app answered {listing.status_code}")
        feature = int(listing.json()["features"]["items"][0]["index"])
    url = f"{base}/runs/{slug}/features/{feature}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1500})
        page.goto(url)
        page.wait_for_selector(".js-plotly-plot svg.main-svg")
        page.screenshot(path=str(out))
        browser.close()
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="database URL, e.g. sqlite:///runs/demo/monosemantic.db")
    parser.add_argument("--run", required=True, help="the run's slug")
    parser.add_argument("--feature", type=int, help="feature index (default: the densest)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "feature_page.png")
    args = parser.parse_args()
    server, base = serve(args.db)
    try:
        url = capture(base, args.run, args.out, args.feature)
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
    print(f"{url} -> {args.out}")


if __name__ == "__main__":
    main()
