"""Audit the installed dependencies for known vulnerabilities (`make lint`).

Online first: pip-audit against PyPI's vulnerability data, for the exact installed versions. When
that service cannot be reached, or answers for none of the packages (a registry mirror without
PyPI's JSON API), the audit falls back to the pinned snapshot in tools/advisories.json and says
so. Either way, a known vulnerability in an installed package fails the lint step, unless the
snapshot's "ignored" map names it with a reason.

    python tools/audit_deps.py            # online, else offline
    python tools/audit_deps.py --offline  # the snapshot only (also: MONOSEMANTIC_AUDIT=offline)
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
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

SNAPSHOT = Path(__file__).with_name("advisories.json")
PYPI_PROBE = "https://pypi.org/pypi/pip/{version}/json"
ONLINE_TIMEOUT = 300  # seconds for the whole online audit


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
    """Whether PyPI's per-version JSON API (the data pip-audit reads) answers here."""
    try:
        url = PYPI_PROBE.format(version=metadata.version("pip"))
        with urllib.request.urlopen(url, timeout=timeout) as response:  # nosec B310  # a fixed https URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError, metadata.PackageNotFoundError):
        return False


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
    args = parser.parse_args(argv)
    snapshot = load_snapshot()
    ignored = {key: reason for key, reason in snapshot.get("ignored", {}).items()}
    offline = args.offline or os.environ.get("MONOSEMANTIC_AUDIT") == "offline"
    findings = None if offline or not online_available() else online_audit()
    if findings is None:
        packages = installed()
        findings = offline_audit(packages, snapshot)
        source = (
            f"the pinned snapshot tools/advisories.json of {snapshot['snapshot_date']} "
            f"({len(snapshot['advisories'])} advisories; the online audit "
            + ("was not asked for)" if offline else "could not be reached)")
        )
        counted = len(packages)
    else:
        source, counted = "pip-audit against PyPI", -1
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
