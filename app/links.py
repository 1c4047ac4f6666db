"""The one place that builds the app's URLs: every page link and its /api/ JSON twin."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote, urlencode

API = "/api"
QueryValue = str | int | float | None


def _query(params: Mapping[str, QueryValue] | None) -> str:
    kept = {k: v for k, v in (params or {}).items() if v is not None and v != ""}
    return f"?{urlencode(kept)}" if kept else ""


def runs_url(api: bool = False, **params: QueryValue) -> str:
    return (f"{API}/runs" if api else "/") + _query(params)


def run_url(slug: str, api: bool = False, **params: QueryValue) -> str:
    return f"{API if api else ''}/runs/{quote(slug, safe='')}" + _query(params)


def feature_url(slug: str, index: int, api: bool = False, example: int | None = None) -> str:
    fragment = f"#example-{example}" if example is not None else ""
    return f"{run_url(slug, api)}/features/{index}{fragment}"


def feature_url_template(slug: str) -> str:
    """A feature's URL with `{index}` in place of its index (filled in by the page's script)."""
    return f"{run_url(slug)}/features/{{index}}"


def findings_url(slug: str, api: bool = False) -> str:
    return f"{run_url(slug, api)}/findings"


def search_url(api: bool = False, **params: QueryValue) -> str:
    return f"{API if api else ''}/search" + _query(params)


def inference_url(slug: str, api: bool = False, **params: QueryValue) -> str:
    return f"{run_url(slug, api)}/inference" + _query(params)


def steer_url(slug: str, api: bool = False, **params: QueryValue) -> str:
    return f"{run_url(slug, api)}/steer" + _query(params)


def interpretability_url(slug: str, api: bool = False) -> str:
    return f"{run_url(slug, api)}/interpretability"


def api_twin(path: str, query: str = "") -> str:
    """The JSON twin of an HTML page's path (the front page's twin is /api/runs)."""
    twin = f"{API}/runs" if path == "/" else f"{API}{path}"
    return f"{twin}?{query}" if query else twin


def family_url(slug: str, index: int, api: bool = False) -> str:
    """The family tree of a feature across dictionary sizes (feature splitting)."""
    return f"{feature_url(slug, index, api)}/family"


def universality_url(slug: str, api: bool = False, **params: QueryValue) -> str:
    """Best-match correlations of a run's model against models trained from other seeds."""
    return f"{run_url(slug, api)}/universality" + _query(params)


def splitting_url(slug: str, api: bool = False) -> str:
    """Feature splitting across the run's dictionary sizes: the counts, the families, the map."""
    return f"{run_url(slug, api)}/splitting"


def case_study_url(slug: str, name: str, api: bool = False) -> str:
    """One of the paper's case studies on a run: a concept proxy against its best feature and neuron."""
    return f"{run_url(slug, api)}/case-studies/{quote(name, safe='')}"
