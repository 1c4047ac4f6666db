"""Jinja2 environment (autoescape on), its filters, and `render` used by every HTML page."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from starlette.responses import Response

from app import links
from app.queries import visible

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"
N_SHADES = 10  # activation shading classes act-0 (none) .. act-10 (the scale's maximum)


def shade(activation: float, scale: float) -> int:
    """The CSS shading class number of an activation relative to `scale` (0 = not firing)."""
    if activation <= 0 or scale <= 0:
        return 0
    return max(1, min(N_SHADES, math.ceil(N_SHADES * activation / scale)))


@functools.lru_cache(maxsize=65_536)
def _escaped(text: str) -> str:
    """A token's display text, HTML-escaped (memoised: a vocabulary repeats across every page)."""
    return str(escape(text))


def token_spans(
    tokens: Sequence[str], activations: Sequence[float], scale: float, focus: int | None = None
) -> Markup:
    """The <span>s of one token strip: shading class, activation in title (and data-act for the
    tooltip, with tabindex so keyboards reach it), focus mark, the token's escaped display text.

    Built here rather than in a Jinja loop because a feature page holds ~1,200 tokens and this is
    several times faster; most tokens of a sparse feature do not fire, so they take a shortcut.
    Every token text goes through `escape`; the other values are numbers.
    """
    parts = []
    for i, (text, act) in enumerate(zip(tokens, activations, strict=False)):
        if i != focus and (act <= 0 or scale <= 0):
            parts.append(f'<span class="t act-0" title="{act:.3g}">{_escaped(text)}</span>')
            continue
        level = shade(act, scale)
        value = f"{act:.3g}"
        focus_class = " focus" if i == focus else ""
        reachable = f' tabindex="0" data-act="{value}"' if level else ""
        parts.append(
            f'<span class="t act-{level}{focus_class}" title="{value}"{reachable}>{_escaped(text)}</span>'
        )
    return Markup("".join(parts))


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


def build_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    env = templates.env
    env.autoescape = True
    env.trim_blocks = True
    env.lstrip_blocks = True
    env.filters.update(num=fmt_num, density=fmt_density, pct=fmt_pct, visible=visible)
    env.globals.update(links=links, token_spans=token_spans)
    return templates


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200, twin: bool = True
) -> Response:
    """Render a page; `twin` adds the link to its JSON twin (same path under /api/)."""
    templates: Jinja2Templates = request.app.state.templates
    context = {"api_url": links.api_twin(request.url.path, request.url.query) if twin else None, **context}
    return templates.TemplateResponse(request, name, context, status_code=status_code)
