"""``make audit``: pip-audit over the installed dependencies, honest about what it could not look up.

pip-audit asks a vulnerability service about each installed release (by default PyPI's per-release JSON
API, or OSV). When the service cannot be reached it reports every package as "not found on PyPI" and still
prints "No known vulnerabilities found" with exit code 0; this wrapper counts what was really audited.

Exit codes: 0 no known vulnerability among the audited packages, or the service is unreachable (printed as
AUDIT NOT RUN; AUDIT_STRICT=1 makes that exit 2); 1 known vulnerabilities (each listed with its fixed
versions); 2 pip-audit itself missing or failing (with AUDIT_STRICT=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

TIMEOUT_S = 900


def run_pip_audit(extra: list[str]) -> tuple[int, dict[str, Any] | None, str]:
    cmd = [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off", "--skip-editable",
           *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return -1, None, f"pip-audit did not finish in {TIMEOUT_S} s"
    try:
        report = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        report = None
    return proc.returncode, report, proc.stderr.strip()


def summarize(report: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(audited, skipped, vulnerable) dependencies of a pip-audit JSON report."""
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    audited = [d for d in deps if not d.get("skip_reason")]
    vulnerable = [d for d in audited if d.get("vulns")]
    return audited, skipped, vulnerable


def main(argv: list[str]) -> int:
    strict = os.environ.get("AUDIT_STRICT") == "1"
    degraded = 2 if strict else 0
    code, report, stderr = run_pip_audit(argv)
    if report is None:
        last = stderr.splitlines()[-1] if stderr else "no output"
        if "No module named pip_audit" in stderr:
            print("AUDIT NOT RUN: pip-audit is not installed (it is in the dev extra: make setup)")
        else:
            print(f"AUDIT NOT RUN: pip-audit failed (exit {code}): {last}")
        return degraded
    audited, skipped, vulnerable = summarize(report)
    total = len(audited) + len(skipped)
    if not audited:
        reasons = {d["skip_reason"].split(":")[0] for d in skipped}
        print(f"AUDIT NOT RUN: the vulnerability service is unreachable from here: 0 of {total} installed packages "
              f"could be looked up ({'; '.join(sorted(reasons)) or 'no packages'}). pip-audit's own 'No known "
              "vulnerabilities found' means nothing in this case. Run `make audit` where PyPI's JSON API "
              "(/pypi/<name>/<version>/json) or OSV is reachable; AUDIT_STRICT=1 makes this an error.")
        return degraded
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed release"
            print(f"VULNERABLE {dep['name']} {dep['version']}: {vuln['id']} (fixed in: {fixes})")
    note = f"; {len(skipped)} could not be looked up: {', '.join(d['name'] for d in skipped)}" if skipped else ""
    print(f"audit: {len(audited)} of {total} installed packages checked, "
          f"{sum(len(d['vulns']) for d in vulnerable)} known vulnerabilities in {len(vulnerable)}{note}")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
