"""Concept proxies for the case studies (Bricken et al. 2023, "Detailed investigations"): each a
plain function from a token's text, in its context, to a score in [0, 1].

The paper measured its Arabic, Hebrew, base64 and DNA features against such proxies (there a
log-likelihood ratio of the concept against the rest). Ours are character classes and patterns
over the decoded text: a `RegexProxy` marks the characters its pattern matches in the whole
stream (a base64 string is a run, so whether a token belongs to it depends on its neighbours),
and a token scores the share of its characters that are marked. A user's proxy is a regex
(`name=REGEX`) or a Python function (`module:function`, called as f(text, context) -> float).

Byte-level BPE splits multi-byte characters across tokens, so `TokenText` decodes the stream as
a whole and gives each token every character its bytes touch: both halves of an Arabic letter
see the letter.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

POSITIVE_SCORE = 0.5  # a token is proxy-positive when at least half its characters hold the concept
CONTEXT_CHARS = 64  # characters of context a function proxy sees on each side


class ProxyError(ValueError):
    """A proxy specification that cannot be used; the message says why."""


@dataclass(frozen=True)
class TokenContext:
    """What a function proxy sees around a token: the text just before and just after it."""

    before: str
    after: str


ScoreFunction = Callable[[str, TokenContext], float]


@dataclass
class TokenText:
    """A token stream decoded as one text: token t touches characters [start[t], end[t])."""

    text: str
    start: np.ndarray  # [T] int64
    end: np.ndarray  # [T] int64

    def __len__(self) -> int:
        return len(self.start)

    def token(self, t: int) -> str:
        return self.text[self.start[t] : self.end[t]]


def decode_tokens(ids: np.ndarray, vocab: Sequence[bytes], eot_id: int | None = None) -> TokenText:
    """Decode token ids into one text and each token's character span. Bytes that are not UTF-8
    become one character each (surrogate escapes); the end-of-text token reads as a newline."""
    pieces = [b"\n" if eot_id is not None and i == eot_id else vocab[i] for i in ids.tolist()]
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    text = b"".join(pieces).decode("utf-8", "surrogateescape")
    codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    escaped = (codepoints >= 0xDC80) & (codepoints <= 0xDCFF)  # one undecodable byte each
    char_bytes = np.select(
        [codepoints < 0x80, codepoints < 0x800, escaped, codepoints < 0x10000], [1, 2, 1, 3], default=4
    ).astype(np.int64)
    char_first_byte = np.cumsum(char_bytes) - char_bytes
    token_first_byte = np.cumsum(lengths) - lengths
    start = np.searchsorted(char_first_byte, token_first_byte, side="right") - 1
    last = np.searchsorted(char_first_byte, token_first_byte + lengths - 1, side="right") - 1
    start = np.clip(start, 0, max(len(text) - 1, 0))
    end = np.where(lengths > 0, last + 1, start)
    return TokenText(text, start.astype(np.int64), end.astype(np.int64))


@dataclass(frozen=True)
class Proxy:
    """A named concept: `score(tokens)` gives every token a score in [0, 1]."""

    name: str
    description: str
    definition: str  # the regex, or module:function, as the user wrote it
    builtin: bool = False

    def score(self, tokens: TokenText) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class RegexProxy(Proxy):
    """The share of a token's characters inside a match of `pattern` over the whole text; `keep`
    may reject matches (a base64 run must mix upper case, lower case and digits)."""

    pattern: re.Pattern[str] = field(default=re.compile(r"(?!)"))
    keep: Callable[[str], bool] | None = None

    def score(self, tokens: TokenText) -> np.ndarray:
        marked = np.zeros(len(tokens.text) + 1, dtype=np.int64)
        for match in self.pattern.finditer(tokens.text):
            if match.end() > match.start() and (self.keep is None or self.keep(match.group())):
                marked[match.start()] += 1
                marked[match.end()] -= 1
        inside = (np.cumsum(marked)[:-1] > 0).astype(np.int64)
        cumulative = np.concatenate([[0], np.cumsum(inside)])
        n_chars = tokens.end - tokens.start
        n_marked = cumulative[tokens.end] - cumulative[tokens.start]
        return np.where(n_chars > 0, n_marked / np.maximum(n_chars, 1), 0.0)


@dataclass(frozen=True)
class FunctionProxy(Proxy):
    """A user's function f(token text, TokenContext) -> score, called once per token."""

    function: ScoreFunction | None = None

    def score(self, tokens: TokenText) -> np.ndarray:
        assert self.function is not None  # nosec B101  # set by every constructor
        text, out = tokens.text, np.zeros(len(tokens), dtype=np.float64)
        for t, (s, e) in enumerate(zip(tokens.start.tolist(), tokens.end.tolist(), strict=True)):
            context = TokenContext(text[max(0, s - CONTEXT_CHARS) : s], text[e : e + CONTEXT_CHARS])
            out[t] = float(self.function(text[s:e], context))
        return np.clip(np.nan_to_num(out), 0.0, 1.0)


# ----------------------------------------------------------------------------- built-in


def _mixed_case_and_digits(run: str) -> bool:
    """Random base64 mixes all three classes; identifiers and words rarely do, hex never."""
    body = run.rstrip("=")
    return (
        sum(c.isdigit() for c in body) >= 2
        and sum(c.isupper() for c in body) >= 2
        and sum(c.islower() for c in body) >= 2
        and "__" not in body
    )


def _hex_mix(run: str) -> bool:
    """A digest mixes letters and digits throughout; 0000...E000 (decimal tables) does not."""
    return sum(c.isdigit() for c in run) >= 4 and sum(c.isalpha() for c in run) >= 4 and len(set(run)) >= 8


def _regex(
    name: str, description: str, pattern: str, keep: Callable[[str], bool] | None = None
) -> RegexProxy:
    return RegexProxy(name, description, pattern, True, re.compile(pattern), keep)


# The paper's Arabic, Hebrew and base64, and the concepts the built-in corpus holds in quantity
# (README, "Case studies": counted on the demo's held-out text, where Hebrew is nearly absent). The
# paper's fourth, DNA, is left out: no package the corpus reads ships sequences.
BUILTIN_PROXIES: tuple[Proxy, ...] = (
    _regex(
        "arabic",
        "Arabic script (Unicode Arabic blocks)",
        r"[\u0600-\u06FF\u0750-\u077F\u08A0-\u08FF\uFB50-\uFDFF\uFE70-\uFEFF]+",
    ),
    _regex("hebrew", "Hebrew script (Unicode Hebrew blocks)", r"[\u0590-\u05FF\uFB1D-\uFB4F]+"),
    _regex(
        "base64",
        "base64 strings: runs of 20+ base64 characters mixing upper case, lower case and digits",
        r"[A-Za-z0-9+/_-]{20,}={0,2}",
        _mixed_case_and_digits,
    ),
    _regex(
        "hex-digest",
        "hexadecimal digests: runs of 32+ hex digits",
        r"(?<![0-9A-Za-z])(?:[0-9a-f]{32,}|[0-9A-F]{32,})(?![0-9A-Za-z])",
        _hex_mix,
    ),
    _regex("cyrillic", "Cyrillic script", r"[\u0400-\u052F]+"),
    _regex("devanagari", "Devanagari script (Hindi, Marathi, Nepali...)", r"[\u0900-\u097F\uA8E0-\uA8FF]+"),
    _regex("url", "URLs (http:// and https://)", r"https?://[^\s<>\"'`)\]]+"),
)

# What the paper says of each concept it studied (the figures are on its case-study pages).
PAPER_CLAIMS: dict[str, str] = {
    "arabic": (
        "The paper's Arabic-script feature (A/1) fires almost only on Arabic text at all but its "
        "weakest activations (specific), fires on most Arabic tokens (sensitive), and pinning it "
        "makes the model predict Arabic; no neuron of the model is comparably specific."
    ),
    "hebrew": (
        "The paper's Hebrew feature behaves like its Arabic one: specific to Hebrew script, "
        "sensitive to it, and its downstream effect is to predict Hebrew."
    ),
    "base64": (
        "The paper's base64 feature fires on base64 strings and little else; in larger dictionaries "
        "it splits into finer features (letters, digits, ASCII encoded as base64)."
    ),
}


def parse_proxy(spec: str) -> Proxy:
    """A user's proxy: `name=REGEX` or `module:function` (named after the function)."""
    if "=" in spec:
        name, pattern = spec.split("=", 1)
        name = name.strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise ProxyError(f"proxy name {name!r}: use letters, digits, '-', '_' or '.' (64 at most)")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ProxyError(f"proxy {name!r}: {pattern!r} is not a regular expression: {exc}") from None
        return RegexProxy(name, f"matches of /{pattern}/", pattern, False, compiled)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ProxyError(f"proxy {spec!r}: expected NAME=REGEX or MODULE:FUNCTION")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ProxyError(f"proxy {spec!r}: cannot import it: {exc}") from None
    if not callable(function):
        raise ProxyError(f"proxy {spec!r} is not a function")
    doc = (function.__doc__ or "").strip().splitlines()
    return FunctionProxy(attr, doc[0] if doc else f"{spec}(text, context)", spec, False, function)


def proxies(user_specs: Sequence[str] = (), builtin: bool = True) -> list[Proxy]:
    """The built-in proxies (unless `builtin` is False) and the user's; a user's proxy replaces a
    built-in one of the same name."""
    users = [parse_proxy(spec) for spec in user_specs]
    names = {p.name for p in users}
    return [p for p in (BUILTIN_PROXIES if builtin else ()) if p.name not in names] + users
