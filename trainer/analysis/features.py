"""Per-feature summaries that need no stream: logit effects, decoder neighbours, token tables, labels.

All vectorised over features, in chunks so that [chunk, vocab] is the largest temporary.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import torch

from trainer.store.schema import display_token

CHUNK = 2048


@dataclass
class LogitEffects:
    positive_ids: torch.Tensor  # [D, n] token ids, value descending
    positive_values: torch.Tensor  # [D, n]
    negative_ids: torch.Tensor  # [D, n] token ids, value ascending
    negative_values: torch.Tensor  # [D, n]
    histogram_edges: torch.Tensor  # [D, bins + 1]
    histogram_counts: torch.Tensor  # [D, bins]


def logit_effects(decoder: torch.Tensor, logit_weights: torch.Tensor, n: int, bins: int) -> LogitEffects:
    """Direct effect of each dictionary vector on the next-token logits: decoder[D, d_mlp] @
    logit_weights[d_mlp, vocab], its n most positive and negative tokens and a histogram of all."""
    parts: list[tuple[torch.Tensor, ...]] = []
    n = min(n, logit_weights.shape[1])
    for start in range(0, decoder.shape[0], CHUNK):
        effect = decoder[start : start + CHUNK].float() @ logit_weights.float()  # [chunk, vocab]
        top = torch.topk(effect, n, dim=1)
        bottom = torch.topk(effect, n, dim=1, largest=False)
        low, high = effect.min(1).values, effect.max(1).values
        width = (high - low).clamp_min(1e-12)
        index = ((effect - low[:, None]) / width[:, None] * bins).long().clamp_(0, bins - 1)
        counts = torch.zeros(effect.shape[0], bins, dtype=torch.long).scatter_add_(
            1, index, torch.ones_like(index)
        )
        edges = low[:, None] + width[:, None] * torch.linspace(0, 1, bins + 1)[None, :]
        parts.append((top.indices, top.values, bottom.indices, bottom.values, edges, counts))
    return LogitEffects(*(torch.cat(columns) for columns in zip(*parts, strict=True)))


def nearest_neighbours(vectors: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and cosine similarities [D, n] of each row's n most similar other rows."""
    unit = vectors.float() / vectors.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = min(n, unit.shape[0] - 1)
    indices, cosines = [], []
    for start in range(0, unit.shape[0], CHUNK):
        cos = unit[start : start + CHUNK] @ unit.T
        rows = torch.arange(cos.shape[0])
        cos[rows, rows + start] = -torch.inf  # not its own neighbour
        top = torch.topk(cos, n, dim=1)
        indices.append(top.indices)
        cosines.append(top.values)
    return torch.cat(indices), torch.cat(cosines)


def top_tokens(token_fire_count: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per feature, the n token ids it fires on most often (ties: lower id first) and the counts."""
    ids, counts = [], []
    for start in range(0, token_fire_count.shape[1], CHUNK):
        block = token_fire_count[:, start : start + CHUNK].T.contiguous()  # [chunk, V]
        order = torch.sort(block, dim=1, descending=True, stable=True)
        ids.append(order.indices[:, :n])
        counts.append(order.values[:, :n])
    return torch.cat(ids), torch.cat(counts)


def token_index(
    token_fire_count: torch.Tensor,
    token_activation_sum: torch.Tensor,
    token_occurrences: torch.Tensor,
    n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per vocabulary token, the n features with the highest mean activation over the token's
    occurrences (only features that fired on it): (feature ids [V, n], means [V, n]); -inf pads."""
    mean = token_activation_sum / token_occurrences.clamp_min(1).unsqueeze(1).float()
    mean = mean.masked_fill(token_fire_count == 0, -torch.inf)
    top = torch.topk(mean, min(n, mean.shape[1]), dim=1)
    return top.indices, top.values


# ---------------------------------------------------------------------------- labels


def _script(text: str) -> str | None:
    """The Unicode script-ish name of the letters in `text` ('ARABIC', 'CJK', 'LATIN', ...)."""
    names = set()
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            names.add(name.split(" ")[0] if name else "OTHER")
    return names.pop() if len(names) == 1 else None


def _kind(text: str) -> str:
    stripped = text.strip()
    if not stripped:
        return "whitespace"
    if stripped.isdigit():
        return "digits"
    if all(unicodedata.category(ch).startswith(("P", "S")) for ch in stripped):
        return "punctuation"
    if "\ufffd" in text:
        return "bytes"
    return _script(stripped) or "mixed"


def auto_label(token_texts: list[str], counts: list[int], fire_count: int, n_tokens: int) -> str:
    """A short, honest label from the evidence: the tokens that carry most of the firings, with
    their share and a character class when they agree, e.g. '"·the", "·a" (54% of firings; latin)'."""
    if fire_count == 0:
        return f"dead: never fired on {n_tokens:,} tokens"
    chosen: list[int] = []
    covered = 0
    for i, count in enumerate(counts[:5]):
        if count <= 0 or (chosen and count < 0.05 * fire_count):
            break
        chosen.append(i)
        covered += count
        if covered >= 0.6 * fire_count:
            break
    share = covered / fire_count
    shown = ", ".join(f'"{display_token(token_texts[i])}"' for i in chosen)
    kinds = {_kind(token_texts[i]) for i in chosen}
    kind = f"; {kinds.pop().lower()}" if len(kinds) == 1 else ""
    if share < 0.2:
        return f"diffuse: top tokens {shown} ({share:.0%} of firings)"
    return f"{shown} ({share:.0%} of firings{kind})"
