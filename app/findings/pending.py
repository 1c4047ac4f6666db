"""Claims this version of monosemantic does not compute yet (issue 11, items 1-3): the paper's
numbers, and a plain statement that ours are missing. Each is replaced by its own module when its
computation lands."""

from __future__ import annotations

from app.findings.context import FindingsContext, figure, not_computed
from app.models import Finding

NOT_YET = "Not computed for this run: this version of monosemantic does not compute it yet."


def interpretability(ctx: FindingsContext) -> Finding:
    return not_computed(
        "interpretability",
        "Features are more interpretable than neurons",
        "An SAE's features are far more interpretable than the MLP's neurons, by human raters and by "
        "automatic interpretability.",
        NOT_YET,
        [
            figure("logit-based autointerpretability, features", 0.74, "0.74", None, "–"),
            figure(
                "logit-based autointerpretability, neurons", 0.53, "0.53 (0.5: a random model)", None, "–"
            ),
            figure("human rubric (0-14) median, features", 12, "12", None, "–"),
            figure("human rubric (0-14) median, neurons", 0, "0", None, "–"),
        ],
    )


def splitting(ctx: FindingsContext) -> Finding:
    return not_computed(
        "splitting",
        "Features split as the dictionary grows",
        "As the dictionary grows, one feature splits into several finer ones; the paper links features "
        "across sizes when their activations' cosine similarity exceeds about 0.4.",
        NOT_YET,
        [figure("link threshold (activation cosine)", 0.4, "~0.4", None, "–")],
    )


def universality(ctx: FindingsContext) -> Finding:
    return not_computed(
        "universality",
        "The same features appear in another model",
        "Model B, trained like A from another seed, has features matching A's: the median best-match "
        "activation correlation is far higher for features than for neurons.",
        NOT_YET,
        [
            figure("median best-match correlation, features", 0.72, "0.72", None, "–"),
            figure("median best-match correlation, neurons", 0.46, "0.46", None, "–"),
        ],
    )
