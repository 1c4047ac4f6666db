"""An install without an optional extra (postgres, hf, corpus) names the extra to install when its
feature is used. A missing package is simulated the way Python records one: sys.modules[name] = None."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from monosemantic.cli import main
from trainer.config import CorpusConfig
from trainer.corpus.text import build_corpus
from trainer.extras import MissingExtra
from trainer.lm.hf_model import load_config, load_tokenizer
from trainer.store.schema import make_engine

POSTGRES_URL = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"


def test_postgres_without_psycopg_names_the_postgres_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingExtra, match=r"pip install 'monosemantic\[postgres\]'"):
        make_engine(POSTGRES_URL)


def test_psycopg2_url_without_psycopg2_says_which_url_to_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg2 is SQLAlchemy 2.0's driver for a bare postgresql:// URL; the extra installs psycopg."""
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(MissingExtra, match=r"postgresql\+psycopg://.*monosemantic\[postgres\]"):
        make_engine("postgresql+psycopg2://nobody@127.0.0.1:1/nothing")


def test_serve_without_psycopg_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    assert main(["serve", "--db", POSTGRES_URL]) == 2
    assert "pip install 'monosemantic[postgres]'" in capsys.readouterr().err


def test_transformers_model_without_transformers_names_the_hf_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    for load in (load_config, load_tokenizer):
        with pytest.raises(MissingExtra, match=r"pip install 'monosemantic\[hf\]'"):
            load(str(tmp_path))


@pytest.mark.parametrize("module", ["sphinx", "babel"])
def test_builtin_corpus_without_its_sources_names_the_corpus_extra(
    module: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtra, match=r"pip install 'monosemantic\[corpus\]'"):
        build_corpus(CorpusConfig(max_bytes=10_000), tmp_path)
    assert not (tmp_path / "documents.jsonl").exists()


def test_own_corpus_needs_no_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "sphinx", None)
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat\n" * 20)
    manifest = build_corpus(CorpusConfig(sources=(str(text),), max_bytes=10_000), tmp_path / "corpus")
    assert manifest["documents"] > 0
