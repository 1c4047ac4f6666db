"""An optional language-model explainer: an OpenAI-compatible chat-completions endpoint writes the
explanation step of trainer/analysis/interpretability.py; the simulation and the scores stay local.

Nothing is sent anywhere unless `analysis.llm_url` is set. The key comes from the environment
(MONOSEMANTIC_LLM_KEY; `monosemantic analyze --llm-key` sets it for the process) and is never
written to the run's config. The model sees only explanation-split evidence (token means, contexts
and top windows); it answers in JSON with the tokens and contexts it expects the unit to fire on,
each with a weight, which the local simulator then plays on the scoring split. Each unit's call is
retried on timeouts, refused connections, 429 and 5xx; a unit whose call fails keeps only its
local explanation, and after a few consecutive transport failures the endpoint is given up on.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KEY_ENV = "MONOSEMANTIC_LLM_KEY"
GIVE_UP_AFTER = 3  # consecutive units whose calls failed in transport

SYSTEM_PROMPT = (
    "You explain what makes one unit of a small language model's MLP layer activate. "
    "Reply with a single JSON object and nothing else."
)
REPLY_FORMAT = (
    'Reply with JSON: {"explanation": "<a short phrase>", '
    '"tokens": [{"token": "<exact token text>", "weight": <0 to 10>}], '
    '"contexts": [{"previous": "<exact token text>", "token": "<exact token text>", "weight": <0 to 10>}]}. '
    "Token texts are the JSON strings shown above, spaces included; list at most 10 tokens and 5 contexts."
)


class LLMError(RuntimeError):
    """A call to the explainer endpoint failed; `transport` says whether the endpoint itself did."""

    def __init__(self, message: str, transport: bool = False) -> None:
        super().__init__(message)
        self.transport = transport


@dataclass(frozen=True)
class LLMEndpoint:
    url: str
    model: str
    key: str | None = None
    timeout: float = 30.0
    retries: int = 2
    backoff: float = 0.5  # seconds before the first retry, doubled after each

    @property
    def chat_url(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else f"{url}/chat/completions"

    @classmethod
    def from_settings(
        cls, url: str | None, model: str | None, timeout: float, retries: int
    ) -> LLMEndpoint | None:
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"analysis.llm_url must be an http(s) URL, not {url!r}")
        if not model:
            raise ValueError(
                "analysis.llm_url is set but analysis.llm_model is not: name the model (--llm-model)"
            )
        return cls(url, model, os.environ.get(KEY_ENV) or None, timeout, retries)


def _post(endpoint: LLMEndpoint, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if endpoint.key:
        headers["Authorization"] = f"Bearer {endpoint.key}"
    request = urllib.request.Request(
        endpoint.chat_url, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    delay = endpoint.backoff
    for attempt in range(endpoint.retries + 1):
        last = attempt == endpoint.retries
        try:
            with urllib.request.urlopen(request, timeout=endpoint.timeout) as response:  # nosec B310  # the URL is checked to be http(s) in LLMEndpoint
                raw = response.read()
            break
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace").strip()
            if (exc.code == 429 or exc.code >= 500) and not last:
                time.sleep(delay)
                delay *= 2
                continue
            raise LLMError(
                f"{endpoint.chat_url} answered HTTP {exc.code}: {detail or exc.reason}",
                transport=exc.code == 429 or exc.code >= 500 or exc.code in (401, 403, 404),
            ) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            if not last:
                time.sleep(delay)
                delay *= 2
                continue
            reason = getattr(exc, "reason", exc)
            raise LLMError(
                f"{endpoint.chat_url} unreachable after {endpoint.retries + 1} attempts: {reason}",
                transport=True,
            ) from exc
    try:
        reply = json.loads(raw)
        content = reply["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise LLMError(f"{endpoint.chat_url} sent no chat completion: {raw[:120]!r}") from exc
    if not isinstance(content, str):
        raise LLMError(f"{endpoint.chat_url} sent a non-text message content")
    try:
        answer = json.loads(_strip_fences(content))
    except ValueError as exc:
        raise LLMError(f"the model's reply is not JSON: {content[:120]!r}") from exc
    if not isinstance(answer, dict):
        raise LLMError(f"the model's reply is not a JSON object: {content[:120]!r}")
    return answer


def _strip_fences(content: str) -> str:
    text = content.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text


@dataclass
class Evidence:
    """What the model is shown about one unit: explanation-split facts only."""

    tokens: list[tuple[str, float]]  # (token text, mean activation)
    contexts: list[tuple[str, str, float]]  # (previous token text or "", token text, mean activation)
    windows: list[tuple[str, str, str, float]]  # (text before, active token, text after, activation)


def prompt(unit: int, evidence: Evidence) -> str:
    lines = [f"Unit {unit}. Evidence from training text (activation 0 = silent)."]
    lines.append("Tokens where it is active, with its mean activation on them:")
    lines += [f"  {json.dumps(text)}: {value:.3g}" for text, value in evidence.tokens] or ["  (none)"]
    if evidence.contexts:
        lines.append("Contexts (previous token, token) where it is most active:")
        lines += [
            f"  {json.dumps(prev) if prev else '(start of text)'} then {json.dumps(cur)}: {value:.3g}"
            for prev, cur, value in evidence.contexts
        ]
    if evidence.windows:
        lines.append("Top examples (the active token in [[ ]], its activation after):")
        lines += [
            f"  {json.dumps(before + '[[' + token + ']]' + after)}: {value:.3g}"
            for before, token, after, value in evidence.windows
        ]
    lines.append(REPLY_FORMAT)
    return "\n".join(lines)


@dataclass
class LLMRules:
    explanation: str
    tokens: list[tuple[int, float]]  # (token id, weight)
    contexts: list[tuple[int | None, int, float]]  # (previous id or None for the start, token id, weight)


def parse_answer(answer: dict[str, Any], token_ids: dict[str, int]) -> LLMRules:
    """The model's JSON as simulation rules; tokens it names that are not in the vocabulary are
    dropped. Raises LLMError if nothing usable is left."""
    explanation = answer.get("explanation")
    if not isinstance(explanation, str) or not explanation.strip():
        raise LLMError('the model\'s reply has no "explanation" string')

    def weight(entry: dict[str, Any]) -> float | None:
        value = entry.get("weight", 1.0)
        return float(value) if isinstance(value, int | float) and value == value else None

    tokens: dict[int, float] = {}
    for entry in answer.get("tokens") or []:
        if isinstance(entry, dict) and entry.get("token") in token_ids and (w := weight(entry)) is not None:
            tokens.setdefault(token_ids[entry["token"]], w)
    contexts: dict[tuple[int | None, int], float] = {}
    for entry in answer.get("contexts") or []:
        if not isinstance(entry, dict) or entry.get("token") not in token_ids:
            continue
        previous = entry.get("previous")
        if previous in (None, "") or previous in token_ids:
            w = weight(entry)
            if w is not None:
                key = (None if previous in (None, "") else token_ids[previous], token_ids[entry["token"]])
                contexts.setdefault(key, w)
    if not tokens and not contexts:
        raise LLMError("none of the tokens the model named is in the vocabulary")
    return LLMRules(
        explanation.strip()[:500],
        list(tokens.items())[:20],
        [(prev, cur, w) for (prev, cur), w in list(contexts.items())[:10]],
    )


@dataclass
class LLMRun:
    rules: dict[int, LLMRules] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    gave_up: str | None = None

    def summary(self, endpoint: LLMEndpoint) -> str:
        text = f"llm explainer {endpoint.model}: {len(self.rules)} unit(s) explained"
        if self.errors:
            first = next(iter(self.errors.items()))
            text += f", {len(self.errors)} failed (unit {first[0]}: {first[1]})"
        if self.gave_up:
            text += f"; stopped calling it: {self.gave_up}"
        return text


def explain_units(
    endpoint: LLMEndpoint,
    units: list[int],
    evidence: Callable[[int], Evidence],
    token_ids: dict[str, int],
    on_unit: Callable[[int], None] | None = None,
) -> LLMRun:
    """Ask the endpoint for each unit's rules. Never raises for a unit's failure: it is recorded."""
    run = LLMRun()
    failures_in_a_row = 0
    for unit in units:
        try:
            answer = _post(
                endpoint,
                {
                    "model": endpoint.model,
                    "temperature": 0,
                    "messages": [
                        {"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": prompt(unit, evidence(unit))},
                    ],
                },
            )
            run.rules[unit] = parse_answer(answer, token_ids)
            failures_in_a_row = 0
        except LLMError as exc:
            run.errors[unit] = str(exc)
            failures_in_a_row = failures_in_a_row + 1 if exc.transport else 0
            if failures_in_a_row >= GIVE_UP_AFTER:
                run.gave_up = f"{GIVE_UP_AFTER} units in a row failed ({exc})"
                break
        if on_unit is not None:
            on_unit(1)
    return run
