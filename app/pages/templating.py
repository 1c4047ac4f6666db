"""Jinja2 environment (autoescape on), its filters, and `render` used by every HTML page."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

from fastapi import Request
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from starlette.responses import Response

from app import links
from app.models import ExampleOut, FeatureDetail
from app.queries.runs import visible


def site_dir(name: str) -> Path:
    """The folder `name` (templates or static): app/web/<name> in an installed wheel (setup.py
    copies it there), else the checkout's top-level <name> (an editable install, or the tests)."""
    package = Path(__file__).resolve().parents[1]  # app/, above app/pages/
    packaged = package / "web" / name
    return packaged if packaged.is_dir() else package.parent / name


TEMPLATES_DIR = site_dir("templates")
STATIC_DIR = site_dir("static")
N_SHADES = 10  # activation shading classes a1 (weakest) .. a10 (the scale's maximum); none if not firing
# Ablation underlines: ub1..ub5 (blue: removing the feature lowers log p(next), it helped) and
# ur1..ur5 (red: it raises it), by |effect| relative to the page's largest.
N_UNDERLINES = 5
MIN_EFFECT_SCALE = 0.01  # nats: a page whose effects are all tiny shows them faint


def shade(activation: float, scale: float) -> int:
    """The CSS shading class number of an activation relative to `scale` (0 = not firing)."""
    if not (activation > 0 and scale > 0):  # also 0 for NaN
        return 0
    return max(1, min(N_SHADES, math.ceil(N_SHADES * activation / scale)))


# A token's display text -> its plain span, "<span>" + HTML-escaped text + "</span>". Display texts
# repeat across every page (they come from a run's vocabulary), so each is escaped once; the map
# is emptied if user text (inference) ever grows it past the bound.
_PLAIN_SPANS: dict[str, str] = {}
_PLAIN_SPANS_MAX = 200_000
_OPEN, _CLOSE = len("<span>"), -len("</span>")
# A marked token's span opening by [shade][is focus]: shade 0 is a token that does not fire.
_OPENERS = [("<span", '<span class="f"')] + [
    (f'<span class="a{n}"', f'<span class="a{n} f"') for n in range(1, N_SHADES + 1)
]


def _plain_span(text: str) -> str:
    span = _PLAIN_SPANS.get(text)
    if span is None:
        if len(_PLAIN_SPANS) >= _PLAIN_SPANS_MAX:
            _PLAIN_SPANS.clear()
        span = _PLAIN_SPANS[text] = f"<span>{escape(text)}</span>"
    return span


def underline_attributes(effect: float | None, scale: float) -> tuple[str, str]:
    """(extra classes, extra attributes) of a token with ablation effect `effect`."""
    if effect is None or not effect or scale <= 0 or not math.isfinite(effect):
        return "", ""
    level = max(1, min(N_UNDERLINES, math.ceil(N_UNDERLINES * abs(effect) / scale)))
    return f" {'ub' if effect < 0 else 'ur'}{level}", f' data-abl="{effect:+.3g}"'


def _strip(
    tokens: Sequence[str],
    activations: Sequence[float],
    scale: float,
    focus: int | None,
    effects: Sequence[float | None] | None = None,
    effect_scale: float = 0.0,
) -> str:
    """The token spans of `token_spans` (which see), as a str; with `effects`, firing tokens also
    get their ablation underline class and data-abl (the tooltip's number)."""
    n = min(len(tokens), len(activations))
    if n < len(tokens) or n < len(activations):
        tokens, activations = tokens[:n], activations[:n]
    found = list(map(_PLAIN_SPANS.get, tokens))
    parts = [_plain_span(text) for text in tokens] if None in found else cast(list[str], found)
    marked = [i for i, act in enumerate(activations) if act]  # ~10% of a feature's tokens
    if focus is not None and 0 <= focus < n and focus not in marked:
        marked.append(focus)
    for i in marked:
        act = activations[i]
        text = parts[i][_OPEN:_CLOSE]
        if act > 0 and scale > 0:
            x = N_SHADES * act / scale  # shade(act, scale), inlined
            opener = _OPENERS[N_SHADES if x >= N_SHADES else math.ceil(x) or 1][i == focus]
            if effects is not None and i < len(effects):
                classes, attributes = underline_attributes(effects[i], effect_scale)
                if classes:
                    opener = f'{opener[:-1]}{classes}"{attributes}'
            parts[i] = f'{opener} data-act="{act:.3g}" tabindex="0">{text}</span>'
        elif act:  # negative (a GELU neuron's), or no scale to shade by
            parts[i] = f'{_OPENERS[0][i == focus]} data-act="{act:.3g}">{text}</span>'
        else:  # the focus token, not firing
            parts[i] = f'<span class="f">{text}</span>'
    return "".join(parts)


def token_spans(
    tokens: Sequence[str], activations: Sequence[float], scale: float, focus: int | None = None
) -> Markup:
    """The <span>s of one token strip, each holding a token's escaped display text.

    Most tokens of a sparse feature do not fire: theirs is a bare <span> (activation 0, which the
    tooltip of /static/app.js shows). A firing token's span has its shading class aN, its
    activation in data-act (for the tooltip) and tabindex so keyboards reach it; a token with a
    negative activation (a GELU neuron's) has data-act only; the focus token has class f.

    Built here rather than in a Jinja loop because a feature page holds ~2,000 tokens and this is
    many times faster. Every token text goes through `escape`; the other values are numbers.
    """
    return Markup(_strip(tokens, activations, scale, focus))  # nosec B704  # _strip escapes every token text


def effect_scale(feature: FeatureDetail) -> float:
    """The |effect| that gets the strongest underline on a feature page: its largest."""
    largest = 0.0
    for example in feature.top_examples + [e for band in feature.interval_bands for e in band.examples]:
        for effect in example.effects or ():
            if effect is not None and abs(effect) > largest:
                largest = abs(effect)
    return max(largest, MIN_EFFECT_SCALE) if largest > 0 else 0.0


def examples_html(examples: Iterable[ExampleOut], scale: float, underline_scale: float = 0.0) -> Markup:
    """The rows of a list of examples: a link to the example, its activation, its token strip.

    A feature page has ~70 of them, built here because a Jinja macro per row cost more than the
    row itself. The values other than the escaped token texts are numbers.
    """
    rows = []
    for ex in examples:
        ex_id = int(ex.id)
        strip = _strip(ex.tokens, ex.activations, scale, ex.focus_position, ex.effects, underline_scale)
        rows.append(
            f'<div class="example" id="example-{ex_id}">'
            f'<a class="example-link" href="#example-{ex_id}" aria-label="Link to example {ex_id}">#</a> '
            f'<span class="example-act" title="activation on the focus token">{fmt_num(ex.max_activation)}</span> '
            f'<span class="toks">{strip}</span></div>\n'
        )
    return Markup("".join(rows))  # nosec B704  # rows are built from escaped token texts and numbers


def fmt_num(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}g}"


def fmt_density(value: float | None) -> str:
    """A firing density as a percentage, with its log10 (the paper's axis)."""
    if value is None:
        return "–"
    if value <= 0:
        return "0 (never fired)"
    return f"{100 * value:.3g}% (log₁₀ {math.log10(value):.2f})"


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def build_templates(asset_version: str = "") -> Jinja2Templates:
    """The pages' Jinja environment; `static_url` adds `asset_version` to the app's own static
    files' URLs, so browsers fetch new CSS and JS with the pages that need them."""

    def static_url(name: str) -> str:
        return f"/static/{name}?v={asset_version}" if asset_version else f"/static/{name}"

    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    env = templates.env
    env.autoescape = True
    env.trim_blocks = True
    env.lstrip_blocks = True
    env.filters.update(num=fmt_num, density=fmt_density, pct=fmt_pct, visible=visible)
    env.globals.update(
        links=links,
        token_spans=token_spans,
        examples_html=examples_html,
        effect_scale=effect_scale,
        static_url=static_url,
    )
    return templates


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200, twin: bool = True
) -> Response:
    """Render a page; `twin` adds the link to its JSON twin (same path under /api/)."""
    templates: Jinja2Templates = request.app.state.templates
    context = {"api_url": links.api_twin(request.url.path, request.url.query) if twin else None, **context}
    return templates.TemplateResponse(request, name, context, status_code=status_code)
