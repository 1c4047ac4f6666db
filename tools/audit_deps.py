"""Audit the installed dependencies for known vulnerabilities (`make lint`).

Online first: pip-audit against PyPI's vulnerability data, for the exact installed versions. When
pip-audit audits none of the packages (a network or mirror that serves PyPI's project pages but
not its per-release JSON, as here), the audit reads the same data from PyPI's project JSON;
when PyPI cannot be reached at all, it falls back to the pinned snapshot in tools/advisories.json
and says so. Either way, a known vulnerability in an installed package fails the lint step,
unless the snapshot's "ignored" map names it with a reason.

    python tools/audit_deps.py            # online, else offline
    python tools/audit_deps.py --offline  # the snapshot only (also: MONOSEMANTIC_AUDIT=offline)
    python tools/audit_deps.py --refresh  # rewrite the snapshot from PyPI for this environment

The snapshot is PyPI's own advisories (OSV data, the source pip-audit reads), for every package
installed by `make install`: those of the installed release where PyPI serves its JSON, else
those of the project's newest release (a release between the installed one and the newest may
have had advisories since fixed that this misses; the snapshot's "coverage" says which packages
were seen that way). Refresh it after `make install` when dependencies change, and commit it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess  # nosec B404  # runs pip-audit, a fixed command line
import sys
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

SNAPSHOT = Path(__file__).with_name("advisories.json")
PYPI_PROBE = "https://pypi.org/pypi/pip/json"
PYPI_RELEASE = "https://pypi.org/pypi/{name}/{version}/json"
PYPI_PROJECT = "https://pypi.org/pypi/{name}/json"
ONLINE_TIMEOUT = 300  # seconds for the whole online audit
LOOKUPS_AT_ONCE = 8  # concurrent PyPI requests


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    advisory: str
    fixed_in: str
    summary: str

    def line(self) -> str:
        return f"{self.package} {self.version}: {self.advisory} ({self.summary}); fixed in {self.fixed_in}"


def installed() -> dict[str, str]:
    """Installed distributions {canonical name: version}, this project itself excluded."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonicalize_name(name) != "monosemantic":
            found[canonicalize_name(name)] = dist.version
    return found


def affects(affected: str, version: str) -> bool:
    """Whether `version` is in `affected`: PEP 440 specifier sets joined by '||'."""
    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    return any(parsed in SpecifierSet(part.strip()) for part in affected.split("||"))


def load_snapshot(path: Path = SNAPSHOT) -> dict:
    snapshot = json.loads(path.read_text())
    for advisory in snapshot["advisories"]:
        for part in advisory["affected"].split("||"):
            SpecifierSet(part.strip())  # a malformed range fails here, not silently later
    return snapshot


def offline_audit(packages: dict[str, str], snapshot: dict) -> list[Finding]:
    """The snapshot's advisories that affect the installed versions."""
    findings = []
    for advisory in snapshot["advisories"]:
        name = canonicalize_name(advisory["package"])
        if name in packages and affects(advisory["affected"], packages[name]):
            findings.append(
                Finding(
                    name, packages[name], advisory["id"], f"not {advisory['affected']}", advisory["summary"]
                )
            )
    return findings


def online_available(timeout: float = 10.0) -> bool:
    """Whether PyPI's JSON API (the data pip-audit reads) answers here."""
    try:
        with urllib.request.urlopen(PYPI_PROBE, timeout=timeout) as response:  # nosec B310  # a fixed https URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _pypi_json(url: str, timeout: float = 30.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # nosec B310  # https://pypi.org only
            return dict(json.load(response))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def pypi_advisories(name: str, version: str) -> tuple[str, str, list[dict]] | None:
    """PyPI's advisories for `name` as (how, release, advisories): how is "release" when PyPI
    served the installed release's JSON, "newest" when only the project's (its newest release's
    advisories); None when PyPI answered neither."""
    page = _pypi_json(PYPI_RELEASE.format(name=name, version=version))
    how = "release"
    if page is None:
        page, how = _pypi_json(PYPI_PROJECT.format(name=name)), "newest"
    if page is None:
        return None
    release = version if how == "release" else str(page["info"]["version"])
    if _valid(version) and Version(version).public == release:
        how, release = "release", version  # the newest is the installed release (a local +cpu build of it)
    return how, release, [v for v in page.get("vulnerabilities", []) if not v.get("withdrawn")]


def affected_range(release: str, fixed_in: list[str]) -> str:
    """The versions an advisory seen on `release` is taken to affect: below its first fix after
    `release`, else (no fix published) up to `release`. Older releases are included, as OSV's
    introduced-in version is not in PyPI's JSON: a conservative guard."""
    seen = Version(release)
    fixes = sorted(Version(v) for v in fixed_in if _valid(v) and Version(v) > seen)
    return f"<{fixes[0]}" if fixes else f"<={release}"


def _valid(version: str) -> bool:
    try:
        Version(version)
    except InvalidVersion:
        return False
    return True


def _advisory(package: str, release: str, vuln: dict) -> dict:
    aliases = sorted({vuln["id"], *vuln.get("aliases", [])})
    cve = [a for a in aliases if a.startswith("CVE-")]
    text = (vuln.get("summary") or vuln.get("details") or "").strip().split("\n")[0]
    return {
        "package": package,
        "id": cve[0] if cve else vuln["id"],
        "aliases": aliases,
        "affected": affected_range(release, vuln.get("fixed_in", [])),
        "fixed_in": sorted(vuln.get("fixed_in", [])),
        "summary": text[:160],
    }


def pypi_snapshot(packages: dict[str, str]) -> tuple[list[dict], dict[str, dict]]:
    """(advisories, coverage) for `packages` from PyPI; an advisory listed under several ids
    (PYSEC, GHSA, CVE) appears once. Raises RuntimeError if PyPI answered for none."""
    with ThreadPoolExecutor(LOOKUPS_AT_ONCE) as pool:
        answers = dict(
            zip(packages, pool.map(lambda item: pypi_advisories(*item), packages.items()), strict=True)
        )
    if not any(answers.values()):
        raise RuntimeError("PyPI's JSON API answered for none of the installed packages")
    advisories, coverage = [], {}
    for name in sorted(answers):
        answer = answers[name]
        if answer is None:
            coverage[name] = {"installed": packages[name], "seen": "not answered"}
            continue
        how, release, vulns = answer
        coverage[name] = {"installed": packages[name], "seen": how, "release": release}
        seen_ids: set[str] = set()
        for vuln in vulns:
            entry = _advisory(name, release, vuln)
            if seen_ids.isdisjoint(entry["aliases"]):
                advisories.append(entry)
            seen_ids.update(entry["aliases"])
    return advisories, coverage


def refresh(path: Path = SNAPSHOT) -> int:
    """Rewrite the snapshot from PyPI for this environment, keeping its "ignored" map."""
    old = load_snapshot(path) if path.exists() else {}
    advisories, coverage = pypi_snapshot(installed())
    snapshot = {
        "about": (
            "Pinned advisory snapshot for `make lint`'s offline dependency audit "
            "(tools/audit_deps.py): PyPI's advisories (OSV data) for every package of the "
            "environment `make install` builds, written by `python tools/audit_deps.py --refresh`. "
            '"affected" is PEP 440 specifiers ("||" joins alternatives); "coverage" says per '
            "package whether PyPI served the installed release's advisories or only the newest "
            'release\'s. "ignored" maps an advisory id to the reason it does not apply.'
        ),
        "snapshot_date": datetime.now(UTC).date().isoformat(),
        "source": "https://pypi.org/pypi/<name>/<version>/json, else https://pypi.org/pypi/<name>/json",
        "advisories": advisories,
        "ignored": old.get("ignored", {}),
        "coverage": coverage,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(snapshot, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    newest = sum(1 for c in coverage.values() if c["seen"] == "newest")
    print(
        f"audit: wrote {path.name}: {len(advisories)} advisories for {len(coverage)} packages "
        f"({len(coverage) - newest} at their installed release, {newest} at their newest release only)"
    )
    return 0


def online_audit() -> list[Finding] | None:
    """pip-audit over this environment; None when the service did not audit any package."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "audit.json"
        command = [
            sys.executable,
            "-m",
            "pip_audit",
            "--local",
            "--skip-editable",
            "--progress-spinner",
            "off",
        ]
        command += ["--format", "json", "--output", str(report)]
        try:
            subprocess.run(command, capture_output=True, timeout=ONLINE_TIMEOUT, check=False)  # nosec B603  # fixed argv
        except subprocess.TimeoutExpired:
            return None
        if not report.exists():
            return None
        dependencies = json.loads(report.read_text()).get("dependencies", [])
    audited = [dep for dep in dependencies if "skip_reason" not in dep]
    if not audited:
        return None
    return [
        Finding(
            dep["name"],
            dep["version"],
            vuln["id"],
            ", ".join(vuln.get("fix_versions", [])) or "?",
            vuln.get("description", "")[:80],
        )
        for dep in audited
        for vuln in dep.get("vulns", [])
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--offline", action="store_true", help="audit against the pinned snapshot only")
    parser.add_argument(
        "--refresh", action="store_true", help="rewrite the snapshot from PyPI for this environment"
    )
    args = parser.parse_args(argv)
    if args.refresh:
        return refresh()
    snapshot = load_snapshot()
    ignored = {key: reason for key, reason in snapshot.get("ignored", {}).items()}
    offline = args.offline or os.environ.get("MONOSEMANTIC_AUDIT") == "offline"
    reachable = not offline and online_available()
    findings = online_audit() if reachable else None
    packages = installed()
    counted = len(packages)
    if findings is not None:
        source, counted = "pip-audit against PyPI", -1
    elif reachable:
        try:
            advisories, _ = pypi_snapshot(packages)
        except RuntimeError:
            reachable = False
        else:
            findings = offline_audit(packages, {"advisories": advisories})
            source = f"PyPI's advisories read now ({len(advisories)}; pip-audit could audit no package here)"
    if findings is None:
        findings = offline_audit(packages, snapshot)
        source = (
            f"the pinned snapshot tools/advisories.json of {snapshot['snapshot_date']} "
            f"({len(snapshot['advisories'])} advisories; the online audit "
            + ("was not asked for)" if offline else "could not be reached)")
        )
        moved = sorted(
            name
            for name, seen in snapshot.get("coverage", {}).items()
            if name in packages and seen.get("installed") != packages[name]
        )
        if moved:
            print(
                f"audit: the snapshot was taken with other versions of {len(moved)} packages: {', '.join(moved)}"
            )
    for finding in findings:
        if finding.advisory in ignored:
            print(f"audit: ignored {finding.line()}: {ignored[finding.advisory]}")
    failing = [f for f in findings if f.advisory not in ignored]
    for finding in failing:
        print(f"audit: VULNERABLE {finding.line()}", file=sys.stderr)
    scope = f"{counted} packages" if counted >= 0 else "the installed packages"
    print(f"audit: {scope} checked with {source}: {len(failing)} known vulnerabilities")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
