"""The README's picture of bring-your-own-model: a feature page of an SAE trained on a tiny GPT-2.

Builds the tiny random GPT-2 the tests build (tests/hfdata.py: from a config, nothing downloaded),
runs the command line on it as a user would (corpus, harvest, train-sae, evaluate, analyze at
blocks.1.mlp.hook_post), serves the database and captures the densest feature's page with headless
Chromium (Debian's, as the browser tests use) to docs/hf_feature_page.png.

    .venv/bin/python tools/hf_screenshot.py [--out docs/hf_feature_page.png] [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from screenshot import capture, serve  # tools/screenshot.py, beside this file

REPO = Path(__file__).resolve().parent.parent
HOOK = "blocks.1.mlp.hook_post"
SIZES = [
    "--preset",
    "tiny",
    "--set",
    "tokenizer.val_fraction=0.2",
    "--set",
    "sae.d_sae=64",
    "--set",
    "sae.variant=topk",
    "--set",
    "sae.k=4",
    "--set",
    "sae.batch_size=256",
    "--set",
    "harvest.n_tokens=16384",
    "--set",
    "sae.n_tokens=32768",
    "--set",
    "eval.n_tokens=2048",
    "--set",
    "analysis.n_tokens=4096",
]


def build_run(root: Path) -> str:
    """The tiny GPT-2, its corpus and the whole chain through the CLI; returns the database URL."""
    # The repository first, the tests last: tests/trainer must not shadow the trainer package.
    sys.path[:0] = [str(REPO)]
    sys.path.append(str(REPO / "tests"))
    from hfdata import build_model, write_corpus  # the tests' own tiny models

    from monosemantic.cli import main

    model = build_model("gpt2", root / "tiny-gpt2")
    corpus = write_corpus(root / "corpus.txt")
    db = f"sqlite:///{root / 'monosemantic.db'}"
    common = [*SIZES, "--out-dir", str(root / "run"), "--db", db, "--model", str(model)]
    if main(["corpus", *common, "--source", str(corpus)]) != 0:
        raise SystemExit("corpus failed")
    for command in ("harvest", "train-sae", "evaluate", "analyze"):
        if main([command, *common, "--hook", HOOK]) != 0:
            raise SystemExit(f"{command} failed")
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "hf_feature_page.png")
    parser.add_argument("--keep", type=Path, help="build the run in this folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        server, base = serve(build_run(root))
        try:
            url = capture(base, f"tiny-gpt2-{HOOK}-topk-64", args.out)
        finally:
            server.should_exit = True  # type: ignore[attr-defined]
    print(f"{url} -> {args.out}")


if __name__ == "__main__":
    main()
