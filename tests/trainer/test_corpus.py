import json
import unicodedata

import pytest

from trainer.config import CorpusConfig
from trainer.corpus.text import (
    CorpusError,
    _corpus_package_files,
    build_corpus,
    corpus_distributions,
    iter_documents,
)


def _scripts(text: str) -> set[str]:
    names = set()
    for ch in text:
        if ord(ch) > 0x2FF and ch.isalpha():
            names.add(unicodedata.name(ch, "?").split()[0])
    return names


def test_builtin_corpus_is_diverse_and_documented(tmp_path):
    manifest = build_corpus(CorpusConfig(max_bytes=3_000_000), tmp_path)
    kinds = {s["kind"] for s in manifest["sources"] if s["bytes"] > 0}
    assert {"code", "prose", "multilingual", "structured", "legal"} <= kinds
    assert all(s["licence"] and s["origin"] for s in manifest["sources"])
    assert 2_000_000 < manifest["total_bytes"] <= 3_000_000
    text = "".join(iter_documents(tmp_path))
    assert "def " in text and "import " in text  # code
    assert {"CYRILLIC", "ARABIC", "CJK"} & _scripts(text)  # non-Latin scripts
    assert "-----BEGIN CERTIFICATE-----" in text or "sha256=" in text  # structured strings
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest


def test_builtin_corpus_reads_only_what_monosemantic_requires(tmp_path):
    """Development tools installed beside it (pytest, mypy, ruff, playwright) must not change the
    corpus, and so every number trained on it; their files are installed here, so this can fail."""
    names = {dist.metadata["Name"].lower() for dist in corpus_distributions()}
    assert {"torch", "numpy", "sphinx", "babel", "certifi"} <= names  # required, and the corpus extra
    assert not names & {"pytest", "mypy", "ruff", "playwright", "matplotlib"}
    files = _corpus_package_files()
    assert not any("site-packages/pytest" in str(f) or "site-packages/_pytest" in str(f) for f in files)
    assert any(f.name == "METADATA" and "torch-" in f.parent.name for f in files)
    manifest = build_corpus(CorpusConfig(max_bytes=200_000), tmp_path)
    assert manifest["distributions"]["torch"].startswith("2.13.0")


def test_builtin_corpus_is_deterministic(tmp_path):
    build_corpus(CorpusConfig(max_bytes=400_000, seed=3), tmp_path / "a")
    build_corpus(CorpusConfig(max_bytes=400_000, seed=3), tmp_path / "b")
    assert (tmp_path / "a/documents.jsonl").read_bytes() == (tmp_path / "b/documents.jsonl").read_bytes()


def test_user_sources_directory_and_jsonl(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/a.txt").write_text("hello world\n")
    (tmp_path / "docs/b.md").write_bytes(b"caf\xe9 latin-1 bytes\n")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"body": "from jsonl"}) + "\n\n" + json.dumps({"body": "two"}) + "\n"
    )
    cfg = CorpusConfig(sources=(str(tmp_path / "docs"), str(tmp_path / "c.jsonl")), text_field="body")
    manifest = build_corpus(cfg, tmp_path / "out")
    docs = sorted(iter_documents(tmp_path / "out"))
    assert docs == ["caf\ufffd latin-1 bytes\n", "from jsonl", "hello world\n", "two"]
    assert [s["documents"] for s in manifest["sources"]] == [2, 2]


def test_user_source_errors_are_clear(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        build_corpus(CorpusConfig(sources=(str(tmp_path / "missing.txt"),)), tmp_path / "out")
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(CorpusError, match="empty"):
        build_corpus(CorpusConfig(sources=(str(tmp_path / "empty.txt"),)), tmp_path / "out")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(CorpusError, match="bad.jsonl:2: no field 'text'"):
        build_corpus(CorpusConfig(sources=(str(tmp_path / "bad.jsonl"),)), tmp_path / "out")
