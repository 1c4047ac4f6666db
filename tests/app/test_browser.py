"""The pages in a real browser (Debian's Chromium through Playwright) against a real uvicorn.

These fail, never skip, when the browser cannot start: install it with `apt-get install chromium`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from appdb import HOSTILE_RUN, NEURON_RUN, SAE_RUN
from conftest import Server
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, expect, sync_playwright

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")  # not session: Playwright's loop would block later asyncio.run calls
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as exc:  # noqa: BLE001 - any launch failure must fail the browser tests
            pytest.fail(
                f"cannot launch Chromium at {CHROMIUM} ({exc}); install it: apt-get install -y chromium"
            )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.dialogs = []  # type: ignore[attr-defined]
    page.script_errors = []  # type: ignore[attr-defined]

    def on_dialog(dialog: Dialog) -> None:
        page.dialogs.append(dialog.message)  # type: ignore[attr-defined]
        dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        # Plotly tries to inject its own <style>; style-src 'self' refuses it (app.css has the rules).
        if message.type == "error" and "inline style" not in message.text:
            page.script_errors.append(message.text)  # type: ignore[attr-defined]

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("pageerror", lambda error: page.script_errors.append(str(error)))  # type: ignore[attr-defined]
    yield page
    context.close()


def test_feature_page_renders_charts_tokens_and_tooltips(server: Server, page: Page) -> None:
    page.goto(f"{server.base_url}/runs/{SAE_RUN}/features/5")
    expect(page.locator("h1")).to_have_text("Feature 5")
    expect(page.locator("[data-chart=chart-activations].js-plotly-plot svg.main-svg").first).to_be_visible()
    expect(
        page.locator("[data-chart=chart-logits] .js-plotly-plot, [data-chart=chart-logits].js-plotly-plot")
    ).to_have_count(1)
    assert page.locator("[data-chart=chart-activations] .bars path").count() > 0  # the bars are drawn

    strongest = page.locator(".example .toks > .a10").first
    expect(strongest).to_be_visible()
    background = strongest.evaluate("el => getComputedStyle(el).backgroundColor")
    assert background not in ("rgba(0, 0, 0, 0)", "transparent")  # the shading class applies

    tooltip = page.locator("#tooltip")
    expect(tooltip).to_be_hidden()
    strongest.hover()
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text(f"activation {strongest.get_attribute('data-act')}")
    page.keyboard.press("Escape")
    expect(tooltip).to_be_hidden()
    strongest.focus()  # keyboards reach it too
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text(f"activation {strongest.get_attribute('data-act')}")
    strongest.evaluate("el => el.blur()")
    expect(tooltip).to_be_hidden()

    quiet = page.locator(".example .toks > span:not([class]):not([data-act])").first  # did not fire
    assert quiet.get_attribute("tabindex") is None
    assert quiet.evaluate("el => getComputedStyle(el).backgroundColor") in ("rgba(0, 0, 0, 0)", "transparent")
    quiet.hover()
    expect(tooltip).to_be_visible()
    expect(tooltip).to_have_text(f"activation 0\ntoken {quiet.text_content()}")
    focus = page.locator(".example .toks > .f").first  # the focus token is underlined
    assert focus.evaluate("el => getComputedStyle(el).boxShadow") != "none"

    ARTIFACTS.mkdir(exist_ok=True)
    strongest.evaluate("el => el.blur()")
    page.mouse.move(0, 0)
    page.screenshot(path=str(ARTIFACTS / "feature_page.png"), full_page=True)
    assert page.script_errors == [] and page.dialogs == []  # type: ignore[attr-defined]


def test_run_page_draws_density_histogram_and_sorts(server: Server, page: Page) -> None:
    page.goto(f"{server.base_url}/runs/{SAE_RUN}")
    expect(page.locator("[data-chart=chart-density] svg.main-svg").first).to_be_visible()
    page.get_by_role("link", name=re.compile("^density")).click()
    expect(page).to_have_url(re.compile(r"sort=density&order=asc"))
    page.get_by_role("link", name="next →").click()
    expect(page).to_have_url(re.compile(r"page=2"))
    assert page.script_errors == []  # type: ignore[attr-defined]


def test_run_page_map_point_opens_its_feature(server: Server, page: Page) -> None:
    page.goto(f"{server.base_url}/runs/{SAE_RUN}#map")
    points = page.locator("[data-chart=chart-map] .scatterlayer .point")
    expect(points.first).to_be_visible()
    assert points.count() > 8  # a point per feature
    points.nth(12).click(force=True)  # points are drawn in index order
    expect(page).to_have_url(re.compile(rf"/runs/{SAE_RUN}/features/12$"))
    expect(page.locator("h1")).to_have_text("Feature 12")
    assert page.script_errors == []  # type: ignore[attr-defined]


def test_search_and_follow_a_result(server: Server, page: Page) -> None:
    page.goto(server.base_url)
    page.locator("#site-search").fill(" the")
    page.locator("#site-search").press("Enter")
    expect(page.locator("h1")).to_have_text("Which features fire on a token?")
    expect(page.locator(".token-matches")).to_contain_text("·the")
    expect(page.locator(".token-matches")).to_contain_text("' the'")
    first = page.locator("table.hits tbody tr td.num a").first
    index = first.inner_text()
    first.click()
    expect(page.locator("h1")).to_have_text(re.compile(rf"^(Feature|Neuron) {index}$"))


def test_shared_example_link_is_the_target(server: Server, page: Page) -> None:
    page.goto(f"{server.base_url}/runs/{SAE_RUN}/features/20")
    last = page.locator(".example").last
    example_id = last.get_attribute("id")
    assert example_id and example_id.startswith("example-")
    page.goto(f"{server.base_url}/runs/{SAE_RUN}/features/20#{example_id}")
    assert page.evaluate("document.querySelector(':target').id") == example_id
    target = page.locator(f"#{example_id}")
    expect(target).to_be_in_viewport()
    outline = target.evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline == "solid"  # the :target highlight applies


def test_inference_box(server: Server, page: Page) -> None:
    page.goto(f"{server.base_url}/runs/{NEURON_RUN}/inference")
    page.locator("textarea[name=text]").fill("the cat sat on the mat")
    page.get_by_role("button", name="Run").click()
    expect(page).to_have_url(re.compile(r"text=the\+cat"))
    expect(page.locator("table.per-token tbody tr").first).to_be_visible()
    assert page.locator("table.per-token tbody tr").count() > 3
    expect(page.locator(".inference-strip .toks > span").first).to_be_visible()
    page.locator("table.per-token tbody tr td a").first.click()
    expect(page.locator("h1")).to_have_text(re.compile(r"^Neuron \d+$"))


def test_hostile_text_stays_text(hostile_server: Server, page: Page) -> None:
    for path in (
        "/",
        f"/runs/{HOSTILE_RUN}",
        f"/runs/{HOSTILE_RUN}/features/0",
        f"/runs/{HOSTILE_RUN}/features/1",
        "/search?token=%3Cscript%3Ealert(1)%3C/script%3E",
    ):
        page.goto(hostile_server.base_url + path)
        page.wait_for_load_state("load")
        for selector in ("header.site", "main", "footer.site", "h1"):
            expect(page.locator(selector)).to_have_count(1)
        assert page.locator("img").count() == 0, path  # no injected <img onerror>
        assert page.locator("main script:not([type='application/json'])").count() == 0, path
    page.goto(f"{hostile_server.base_url}/runs/{HOSTILE_RUN}/features/0")
    expect(page.locator("h1")).to_have_text("Feature 0")
    expect(page.locator("p.label bdi")).to_have_text("<script>alert(1)</script>")
    page.locator(".example .toks > [data-act]").first.hover()
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_findings_page_and_ablation_underlines(real_server: Server, page: Page) -> None:
    """On a real tiny run: the run page links its findings; every claim has its section, the
    uncomputed ones say so; an ablation link opens a feature page whose underlined tokens show
    their effect in the tooltip."""
    runs = httpx.get(f"{real_server.base_url}/api/runs").json()["runs"]
    sae = next(run for run in runs if run["kind"] == "sae")
    page.goto(f"{real_server.base_url}{sae['url']}")
    page.get_by_role("link", name="The paper's findings on this run").click()
    expect(page.locator("h1")).to_contain_text("The paper's findings on")
    for key in ("reconstruction", "interpretability", "splitting", "universality", "density", "ablation"):
        expect(page.locator(f"section#{key} h2")).to_be_visible()
    # A single run has its interpretability scores; splitting and universality need other runs,
    # and say which command computes them.
    expect(page.locator("section#interpretability.status-not_computed")).to_have_count(0)
    for key in ("splitting", "universality"):
        expect(page.locator(f"section#{key}.status-not_computed .not-computed")).to_contain_text(
            "monosemantic"
        )
    expect(page.locator("section#density td.ours").first).to_contain_text("%")

    page.locator("section#ablation .finding-links a").first.click()
    expect(page.locator("h1")).to_have_text(re.compile(r"^Feature \d+$"))
    expect(page.locator(".ablation-legend")).to_be_visible()
    underlined = page.locator(".example .toks > [data-abl]").first
    expect(underlined).to_be_visible()
    border = underlined.evaluate("el => getComputedStyle(el).borderBottomStyle")
    assert border == "solid"  # the underline class applies
    colour = underlined.evaluate("el => getComputedStyle(el).borderBottomColor")
    effect = float(underlined.get_attribute("data-abl") or "nan")
    assert ("36, 113, 163" if effect < 0 else "192, 57, 43") in colour  # blue: it helped; red: it hurt
    underlined.hover()
    expect(page.locator("#tooltip")).to_contain_text(
        f"removing it: log p(next) {underlined.get_attribute('data-abl')} nats"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.mouse.move(0, 0)
    page.screenshot(path=str(ARTIFACTS / "feature_page_ablation.png"), full_page=True)
    assert page.script_errors == [] and page.dialogs == []  # type: ignore[attr-defined]


def test_case_study_page_and_its_json(real_server: Server, page: Page) -> None:
    """On a real tiny run: the findings page links each case study; the page shows the best
    feature's and the best neuron's histograms coloured by the proxy (or says why there are none)
    and its JSON twin answers the same case study."""
    runs = httpx.get(f"{real_server.base_url}/api/runs").json()["runs"]
    sae = next(run for run in runs if run["kind"] == "sae")
    page.goto(f"{real_server.base_url}{sae['url']}/findings")
    rows = page.locator("section#case_studies table.case-studies tbody tr")
    expect(rows.first).to_be_visible()
    measured = page.locator("section#case_studies table.case-studies tbody tr:has(td.ours) a")
    link = measured.first if measured.count() else rows.first.locator("a")
    name = link.inner_text()
    link.click()
    expect(page.locator("h1")).to_have_text(f"Case study: {name}")
    twin = page.locator('link[rel="alternate"][type="application/json"]').get_attribute("href")
    assert twin is not None and twin.endswith(f"/case-studies/{name}")
    data = httpx.get(f"{real_server.base_url}{twin}").json()
    assert data["name"] == name and data["url"] == page.url.removeprefix(real_server.base_url)
    if data["status"] == "ok":
        for kind in ("feature", "neuron"):
            expect(
                page.locator(f"[data-chart=chart-case-{kind}].js-plotly-plot svg.main-svg").first
            ).to_be_visible()
        assert page.locator("[data-chart=chart-case-feature] .bars path").count() > 0
        expect(page.locator("#case-downstream")).to_be_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "case_study_page.png"), full_page=True)
        page.locator("#case-feature h3 a").click()
        expect(page.locator("h1")).to_have_text(f"Feature {data['feature']['index']}")
    else:
        expect(page.locator("#case-message")).to_be_visible()
        expect(page.locator("[data-chart^=chart-case]")).to_have_count(0)
    assert page.script_errors == [] and page.dialogs == []  # type: ignore[attr-defined]
