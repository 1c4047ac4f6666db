"""The text corpus: a built-in offline mix, or the user's own files.

The paper trains on the Pile, a mix of web text, code, papers and more. Nothing may be
downloaded here at run time, so the default corpus is built from text that the install step
puts on every machine: the Python standard library and the installed packages (source code,
their docstrings as English prose, READMEs and licences), Sphinx's human translations in ~60
languages and Unicode CLDR locale data in ~200 (non-Latin scripts), CJK sample texts that ship with CPython, and structured
strings (the certificate bundle's base64, wheel RECORD tables of paths and hashes, decimal
arithmetic test tables). Every source is listed in `manifest.json` with its size and licence.

The corpus is written as `documents.jsonl` ({"source", "text"} per line) plus `manifest.json`.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import json
import random
import re
import sys
import sysconfig
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from tqdm import tqdm

from trainer.checkpoint import atomic_write_text
from trainer.config import CorpusConfig
from trainer.extras import require_extra

MAX_DOCUMENT_CHARS = 32_000  # longer files are split at line boundaries into several documents


class CorpusError(ValueError):
    """The corpus cannot be built: a missing source, or no text at all."""


@dataclass(frozen=True)
class Source:
    """One family of documents in the built-in corpus, and its share of the byte budget."""

    name: str
    kind: str  # code | prose | multilingual | structured | legal
    share: float
    licence: str
    origin: str
    documents: Callable[[random.Random], Iterator[str]]


# ----------------------------------------------------------------------------- locations


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _site_packages() -> list[Path]:
    paths = {Path(p) for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])}
    return sorted(p for p in paths if p.is_dir())


def _sorted_files(root: Path, pattern: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    if not root.is_dir():
        return []
    files = [p for p in root.rglob(pattern) if p.is_file() and not any(part in exclude for part in p.parts)]
    return sorted(files)


# The optional dependencies whose packages the default corpus reads, besides the required ones.
CORPUS_EXTRAS = ("corpus",)


def require_corpus_extra() -> None:
    """Sphinx's translations and Babel's CLDR data (the `corpus` extra) are installed, or
    MissingExtra says how: without them the built-in corpus would silently lose its non-Latin
    scripts, and every number trained on it would differ."""
    for module in ("sphinx", "babel"):
        require_extra(module, "corpus", "the built-in corpus (its multilingual sources)")


def _requirement_names(dist: metadata.Distribution, extras: Iterable[str]) -> list[str]:
    """The names of the distributions `dist` requires, with the given extras of its own."""
    names = []
    for line in dist.requires or []:
        requirement = Requirement(line)
        environments = [{"extra": extra} for extra in ("", *extras)]
        if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
            names.append(f"{canonicalize_name(requirement.name)}[{','.join(sorted(requirement.extras))}]")
    return names


@functools.cache
def corpus_distributions() -> tuple[metadata.Distribution, ...]:
    """The installed distributions whose files the default corpus reads: what monosemantic
    requires (with CORPUS_EXTRAS), transitively. Development tools (pytest, mypy, matplotlib...)
    and whatever else shares the environment stay out, so the corpus, and every number trained
    on it, does not depend on what else happens to be installed. Empty when monosemantic is not
    installed (then every installed package is read)."""
    try:
        root = metadata.distribution("monosemantic")
    except metadata.PackageNotFoundError:
        return ()
    found: dict[str, metadata.Distribution] = {}
    pending = _requirement_names(root, CORPUS_EXTRAS)
    while pending:
        name, _, extras = pending.pop().rstrip("]").partition("[")
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python
        found[name] = dist
        pending += _requirement_names(dist, [e for e in extras.split(",") if e])
    return tuple(found[name] for name in sorted(found))


@functools.cache
def _corpus_package_files() -> tuple[Path, ...]:
    """Every file of `corpus_distributions` (their RECORDs), or of site-packages without them."""
    dists = corpus_distributions()
    if not dists:
        return tuple(f for root in _site_packages() for f in _sorted_files(root, "*"))
    files = {
        Path(dist.locate_file(f)).resolve()  # type: ignore[arg-type]
        for dist in dists
        for f in dist.files or []
    }
    return tuple(sorted(f for f in files if f.is_file()))


def _package_files(pattern: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    """The corpus packages' files whose name matches the glob `pattern`, minus `exclude`d folders."""
    return [
        f
        for f in _corpus_package_files()
        if fnmatch.fnmatchcase(f.name, pattern) and not any(part in exclude for part in f.parts)
    ]


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _split(text: str) -> Iterator[str]:
    """Cut a long text into documents of at most MAX_DOCUMENT_CHARS, at line boundaries."""
    if len(text) <= MAX_DOCUMENT_CHARS:
        if text.strip():
            yield text
        return
    chunk: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        if size + len(line) > MAX_DOCUMENT_CHARS and chunk:
            yield "".join(chunk)
            chunk, size = [], 0
        chunk.append(line[:MAX_DOCUMENT_CHARS])
        size += len(chunk[-1])
    if chunk and "".join(chunk).strip():
        yield "".join(chunk)


def _shuffled(files: list[Path], rng: random.Random) -> list[Path]:
    files = list(files)
    rng.shuffle(files)
    return files


# ----------------------------------------------------------------------------- sources

_SKIP_DIRS = ("site-packages", "__pycache__", "idlelib", "turtledemo")


def _python_code(rng: random.Random) -> Iterator[str]:
    files = _sorted_files(_stdlib_dir(), "*.py", _SKIP_DIRS)
    files += _package_files("*.py", ("__pycache__",))
    for path in _shuffled(files, rng):
        yield from _split(_read(path))


def _docstrings(rng: random.Random) -> Iterator[str]:
    """English prose: module, class and function docstrings of the installed Python code."""
    files = _sorted_files(_stdlib_dir(), "*.py", (*_SKIP_DIRS, "test", "tests"))
    files += _package_files("*.py", ("__pycache__", "test", "tests"))
    for path in _shuffled(files, rng):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        nodes = [
            tree,
            *(
                n
                for n in ast.walk(tree)
                if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            ),
        ]
        texts = [doc for node in nodes if (doc := ast.get_docstring(node)) and len(doc) > 200]
        if texts:
            yield from _split("\n\n".join(texts))


def _python_reference(rng: random.Random) -> Iterator[str]:
    """The Python language reference's topics (pydoc_data), English technical prose."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return
    for key in sorted(topics, key=lambda _: rng.random()):
        yield from _split(topics[key])


def _package_docs(rng: random.Random) -> Iterator[str]:
    """READMEs of the installed packages (the long description in each METADATA) and doc files."""
    files: list[Path] = []
    files += _package_files("METADATA")
    files += [p for ext in ("*.md", "*.rst") for p in _package_files(ext)]
    for path in _shuffled(files, rng):
        text = _read(path)
        if path.name == "METADATA":
            text = text.split("\n\n", 1)[1] if "\n\n" in text else ""
        yield from _split(text)


_PO_STRING = re.compile(r'^(msgid|msgstr(?:\[\d+\])?)?\s*"(.*)"\s*$')


def _po_translations(path: Path) -> str:
    """The translated strings (msgstr) of a gettext .po file, one per line."""
    out: list[str] = []
    current: list[str] | None = None
    for line in _read(path).splitlines():
        match = _PO_STRING.match(line)
        if not match:
            current = None
            continue
        keyword, value = match.groups()
        value = value.replace('\\"', '"').replace("\\n", "\n").replace("\\t", "\t").replace("\\\\", "\\")
        if keyword and keyword.startswith("msgstr"):
            current = [value]
            out.append("")
        elif keyword:  # msgid
            current = None
            continue
        if current is not None and not keyword:
            current.append(value)
        if current is not None:
            out[-1] = "".join(current)
    return "\n".join(t for t in out if t.strip())


def _translations(rng: random.Random) -> Iterator[str]:
    files: list[Path] = []
    files += _package_files("*.po")
    for path in _shuffled(files, rng):
        yield from _split(_po_translations(path))
    for path in _sorted_files(_stdlib_dir() / "test" / "cjkencodings", "*-utf8.txt"):
        yield from _split(_read(path))


def _strings_in(value: object, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _strings_in(item, out)
    elif isinstance(value, Mapping):
        for key in value:
            _strings_in(value[key], out)


def _cldr_locales(rng: random.Random) -> Iterator[str]:
    """Unicode CLDR locale data (names of places, languages, months, units...) in ~200 languages
    and their own scripts, as shipped by Babel."""
    try:
        from babel import localedata
    except ImportError:
        return
    names = [n for n in localedata.locale_identifiers() if "_" not in n and n != "root"]
    for name in sorted(names, key=lambda _: rng.random()):
        out: list[str] = []
        _strings_in(localedata.load(name), out)
        yield from _split("\n".join(dict.fromkeys(out)))


def _structured(rng: random.Random) -> Iterator[str]:
    """Base64 (certificates), CSV tables of paths / hashes / sizes (wheel RECORDs), number tables."""
    files: list[Path] = []
    files += _package_files("RECORD") + _package_files("*.pem")
    files += _sorted_files(_stdlib_dir() / "test" / "decimaltestdata", "*.decTest")
    files += _sorted_files(_stdlib_dir() / "test" / "mathdata", "*.txt")
    for path in _shuffled(files, rng):
        yield from _split(_read(path))


def _licences(rng: random.Random) -> Iterator[str]:
    files: list[Path] = []
    files += [p for p in _package_files("LICEN[CS]E*") if p.suffix in ("", ".txt", ".md", ".rst")]
    files += _sorted_files(Path("/usr/share/common-licenses"), "*")
    for path in _shuffled(files, rng):
        yield from _split(_read(path))


BUILTIN_SOURCES: tuple[Source, ...] = (
    Source(
        "python-code",
        "code",
        0.34,
        "PSF-2.0 and the installed packages' licences",
        "CPython standard library and installed packages (*.py)",
        _python_code,
    ),
    Source(
        "docstrings",
        "prose",
        0.30,
        "PSF-2.0 and the installed packages' licences",
        "docstrings of the standard library and installed packages",
        _docstrings,
    ),
    Source(
        "python-reference",
        "prose",
        0.03,
        "PSF-2.0",
        "pydoc_data.topics (Python language reference)",
        _python_reference,
    ),
    Source(
        "package-docs",
        "prose",
        0.04,
        "each package's own licence",
        "package METADATA / README files",
        _package_docs,
    ),
    Source(
        "translations",
        "multilingual",
        0.04,
        "BSD-2-Clause (Sphinx) and PSF-2.0",
        "Sphinx's gettext catalogues in ~60 languages; CPython's CJK samples",
        _translations,
    ),
    Source(
        "cldr-locales",
        "multilingual",
        0.10,
        "Unicode-3.0 (CLDR data via Babel)",
        "Babel's CLDR locale data: localised names and formats in ~200 languages",
        _cldr_locales,
    ),
    Source(
        "structured",
        "structured",
        0.10,
        "MPL-2.0 (certifi), PSF-2.0, package licences",
        "certificate bundle (base64), wheel RECORD tables, decimal test tables",
        _structured,
    ),
    Source(
        "licences", "legal", 0.05, "the licences themselves", "licence texts of installed packages", _licences
    ),
)


# ----------------------------------------------------------------------------- user sources


def _user_documents(source: str, text_field: str, stats: dict[str, int]) -> Iterator[str]:
    path = Path(source)
    if not path.exists():
        raise CorpusError(f"corpus source {source} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        data = file.read_bytes()
        text = data.decode("utf-8", errors="replace")
        if "\ufffd" in text and b"\xef\xbf\xbd" not in data:
            stats["files_with_invalid_utf8"] += 1
        if file.suffix == ".jsonl":
            for line_number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{file}:{line_number}: not valid JSON ({exc.msg})") from exc
                if not isinstance(record, dict) or text_field not in record:
                    raise CorpusError(f"{file}:{line_number}: no field {text_field!r} (set --text-field)")
                yield from _split(str(record[text_field]))
        else:
            yield from _split(text)


# ----------------------------------------------------------------------------- build


def build_corpus(cfg: CorpusConfig, out_dir: Path) -> dict[str, Any]:
    """Write documents.jsonl and manifest.json to `out_dir`; return the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    documents: list[tuple[str, str]] = []
    manifest_sources: list[dict] = []
    if cfg.sources:
        stats = {"files_with_invalid_utf8": 0}
        size = 0
        for user_source in cfg.sources:
            before = len(documents)
            source_bytes = 0
            for doc in _user_documents(user_source, cfg.text_field, stats):
                n = len(doc.encode("utf-8"))
                if size + n > cfg.max_bytes:
                    break
                documents.append((user_source, doc))
                size += n
                source_bytes += n
            manifest_sources.append(
                {
                    "name": user_source,
                    "kind": "user",
                    "bytes": source_bytes,
                    "documents": len(documents) - before,
                    "licence": "user-supplied",
                    "origin": str(Path(user_source).resolve()),
                }
            )
        if stats["files_with_invalid_utf8"]:
            print(
                f"warning: {stats['files_with_invalid_utf8']} file(s) had bytes that are not UTF-8; "
                "decoded them with U+FFFD replacement characters",
                file=sys.stderr,
            )
    else:
        require_corpus_extra()
        for source in BUILTIN_SOURCES:
            budget = int(cfg.max_bytes * source.share)
            rng = random.Random(f"{cfg.seed}-{source.name}")  # nosec B311  # a reproducible sample, not a secret
            taken = 0
            count = 0
            with tqdm(
                total=budget, desc=f"corpus: {source.name}", unit="B", unit_scale=True, leave=False
            ) as bar:
                for doc in source.documents(rng):
                    n = len(doc.encode("utf-8"))
                    if taken + n > budget:
                        if taken > budget * 0.98:
                            break
                        continue
                    documents.append((source.name, doc))
                    taken += n
                    count += 1
                    bar.update(n)
            manifest_sources.append(
                {
                    "name": source.name,
                    "kind": source.kind,
                    "bytes": taken,
                    "documents": count,
                    "licence": source.licence,
                    "origin": source.origin,
                }
            )
    if not documents or not any(doc.strip() for _, doc in documents):
        raise CorpusError("the corpus is empty: no text found in the given sources")
    random.Random(cfg.seed).shuffle(documents)  # nosec B311  # a reproducible order, not a secret
    lines = "".join(json.dumps({"source": s, "text": t}, ensure_ascii=False) + "\n" for s, t in documents)
    atomic_write_text(out_dir / "documents.jsonl", lines)
    manifest = {
        "sources": manifest_sources,
        "documents": len(documents),
        "total_bytes": sum(s["bytes"] for s in manifest_sources),
        "python": sys.version.split()[0],
        "distributions": {dist.metadata["Name"]: dist.version for dist in corpus_distributions()},
        "seed": cfg.seed,
    }
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def iter_documents(corpus_dir: Path) -> Iterator[str]:
    path = Path(corpus_dir) / "documents.jsonl"
    if not path.exists():
        raise CorpusError(f"no corpus at {corpus_dir} (run `monosemantic corpus` first)")
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)["text"]


def load_manifest(corpus_dir: Path) -> dict[str, Any]:
    path = Path(corpus_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}
