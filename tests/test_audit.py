"""The offline dependency audit: the pinned snapshot parses, flags affected versions and spares
fixed ones, and the installed environment passes it."""

from __future__ import annotations

from tools.audit_deps import affects, installed, load_snapshot, main, offline_audit


def test_the_snapshot_flags_affected_versions_and_spares_fixed_ones() -> None:
    snapshot = load_snapshot()
    old = offline_audit({"jinja2": "3.1.2", "torch": "2.5.1", "urllib3": "2.0.5", "h11": "0.16.0"}, snapshot)
    ids = {(f.package, f.advisory) for f in old}
    assert ("torch", "CVE-2025-32434") in ids  # weights_only=True could still run code before 2.6
    assert ("jinja2", "CVE-2024-22195") in ids and ("jinja2", "CVE-2025-27516") in ids
    assert ("urllib3", "CVE-2023-43804") in ids and ("urllib3", "CVE-2024-37891") in ids
    assert not any(f.package == "h11" for f in old)
    assert offline_audit({"jinja2": "3.1.6", "torch": "2.13.0+cpu", "urllib3": "2.5.0"}, snapshot) == []
    assert affects("<1.26.19 || >=2.0.0,<2.2.2", "2.1.0") and not affects(
        "<1.26.19 || >=2.0.0,<2.2.2", "2.2.2"
    )


def test_the_installed_environment_passes_the_offline_audit(capsys) -> None:
    assert "torch" in installed() and "monosemantic" not in installed()
    assert main(["--offline"]) == 0
    out = capsys.readouterr().out
    assert "0 known vulnerabilities" in out and "pinned snapshot" in out
