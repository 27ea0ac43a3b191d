"""tools/audit.py reads pip-audit's JSON honestly: nothing looked up is "not run", not "no vulnerabilities"."""

from __future__ import annotations

from typing import Any

import pytest

from tools import audit

UNREACHABLE = {"dependencies": [
    {"name": "numpy", "skip_reason": "Dependency not found on PyPI and could not be audited: numpy (2.3.0)"},
    {"name": "prefect", "skip_reason": "Dependency not found on PyPI and could not be audited: prefect (3.4.0)"}],
    "fixes": []}
FOUND = {"dependencies": [
    {"name": "jinja2", "version": "3.1.2", "vulns": [
        {"id": "GHSA-h5c8-rqwp-cp95", "fix_versions": ["3.1.3"], "aliases": ["CVE-2024-22195"]}]},
    {"name": "numpy", "version": "2.3.0", "vulns": []},
    {"name": "mindscript-render", "skip_reason": "distribution marked as editable"}], "fixes": []}
CLEAN = {"dependencies": [{"name": "numpy", "version": "2.3.0", "vulns": []}], "fixes": []}


def _with(monkeypatch: pytest.MonkeyPatch, report: dict[str, Any] | None, stderr: str = "") -> None:
    monkeypatch.setattr(audit, "run_pip_audit", lambda extra: (0 if report else 1, report, stderr))


def test_an_unreachable_service_is_reported_as_not_run(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _with(monkeypatch, UNREACHABLE)
    assert audit.main([]) == 0
    assert capsys.readouterr().out.startswith("AUDIT NOT RUN: the vulnerability service is unreachable from here: "
                                              "0 of 2 installed packages")
    monkeypatch.setenv("AUDIT_STRICT", "1")
    assert audit.main([]) == 2


def test_known_vulnerabilities_fail_with_their_fixed_versions(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _with(monkeypatch, FOUND)
    assert audit.main([]) == 1
    out = capsys.readouterr().out
    assert "VULNERABLE jinja2 3.1.2: GHSA-h5c8-rqwp-cp95 (fixed in: 3.1.3)" in out
    assert "2 of 3 installed packages checked, 1 known vulnerabilities in 1; 1 could not be looked up" in out


def test_clean_and_missing_tool(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _with(monkeypatch, CLEAN)
    assert audit.main([]) == 0 and "1 of 1 installed packages checked, 0 known" in capsys.readouterr().out
    _with(monkeypatch, None, "/usr/bin/python: No module named pip_audit")
    assert audit.main([]) == 0 and "pip-audit is not installed" in capsys.readouterr().out
