"""The dependency audit: PyPI's advisory records become affected ranges, the snapshot flags
affected versions and spares fixed ones, the pinned snapshot is the refresh's output, and the
installed environment passes it."""

from __future__ import annotations

from tools.audit_deps import _advisory, affects, installed, load_snapshot, main, offline_audit

# Two records as PyPI's JSON API serves them (ecdsa's, as served for 0.19.2; a fixed one).
UNFIXED = {
    "aliases": ["CVE-2024-23342", "GHSA-wj6h-64fc-37mp"],
    "details": "python-ecdsa has been found to be subject to a Minerva timing attack on the P-256 curve.",
    "fixed_in": [],
    "id": "PYSEC-2026-1325",
    "summary": None,
}
FIXED = {"aliases": ["CVE-2024-56201"], "details": "sandbox breakout", "fixed_in": ["3.1.5"], "id": "GHSA-x"}


def test_pypi_records_become_affected_ranges_that_flag_and_spare_versions() -> None:
    unfixed, fixed = _advisory("ecdsa", "0.19.2", UNFIXED), _advisory("jinja2", "3.1.4", FIXED)
    assert unfixed["id"] == "CVE-2024-23342" and unfixed["affected"] == "<=0.19.2"
    assert "PYSEC-2026-1325" in unfixed["aliases"] and unfixed["summary"].startswith("python-ecdsa")
    assert fixed["affected"] == "<3.1.5" and fixed["fixed_in"] == ["3.1.5"]
    snapshot = {"advisories": [unfixed, fixed]}
    flagged = offline_audit({"ecdsa": "0.19.2", "jinja2": "3.1.4", "h11": "0.16.0"}, snapshot)
    assert {(f.package, f.advisory) for f in flagged} == {
        ("ecdsa", "CVE-2024-23342"),
        ("jinja2", "CVE-2024-56201"),
    }
    assert offline_audit({"ecdsa": "0.20.0", "jinja2": "3.1.6"}, snapshot) == []
    assert affects("<1.26.19 || >=2.0.0,<2.2.2", "2.1.0") and not affects(
        "<1.26.19 || >=2.0.0,<2.2.2", "2.2.2"
    )


def test_the_pinned_snapshot_is_a_refresh_of_this_environment() -> None:
    snapshot = load_snapshot()
    assert snapshot["source"].startswith("https://pypi.org/pypi/")
    assert {"torch", "fastapi", "jinja2"} <= set(snapshot["coverage"])
    for advisory in snapshot["advisories"]:
        assert advisory["package"] in snapshot["coverage"] and advisory["aliases"]


def test_the_installed_environment_passes_the_offline_audit(capsys) -> None:
    assert "torch" in installed() and "monosemantic" not in installed()
    assert main(["--offline"]) == 0
    out = capsys.readouterr().out
    assert "0 known vulnerabilities" in out and "pinned snapshot" in out
