#!/usr/bin/env python3
"""Audit taskq's installed runtime dependencies for known vulnerabilities.

    python scripts/audit-deps.py [--ignore-vuln ID ...]

1. The runtime closure: every distribution the installed `taskq` requires (with the
   extras it asks for), recursively, at the installed version. Dev tools are not part of
   what ships in the image and are not audited.
2. pip-audit checks each pinned version against PyPI's vulnerability data (the per-release
   JSON API, which carries the PyPA advisory database).
3. Where that per-release data cannot be fetched (some mirrors and proxies serve only the
   project pages, and pip-audit then reports "not found on PyPI" and would pass), the
   project page's `vulnerabilities` (those of the newest release) still vouch for a
   dependency that *is* at its newest release.
4. Anything still unaudited — no network, a proxy, an older pin — fails the audit loudly.
   Never does missing data pass as "no known vulnerabilities".

Exit codes: 0 clean, 1 known vulnerabilities or dependencies that could not be audited,
2 usage or environment errors. TASKQ_AUDIT_PYPI_URL overrides https://pypi.org (tests).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

PROJECT = "taskq"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(project: str = PROJECT) -> dict[str, str]:
    """name -> installed version for everything `project` needs at run time."""
    found: dict[str, str] = {}

    def visit(name: str, extras: frozenset[str]) -> None:
        dist = md.distribution(name)
        key = canonical(dist.metadata["Name"])
        if key != canonical(project):
            found[key] = dist.version
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker and not any(
                req.marker.evaluate({"extra": extra}) for extra in (extras or {""})
            ):
                continue
            child = canonical(req.name)
            if child in found:
                continue
            visit(req.name, frozenset(req.extras))

    visit(project, frozenset())
    return dict(sorted(found.items()))


def pip_audit(pins: dict[str, str], ignore: list[str]) -> list[dict[str, Any]]:
    """pip-audit's JSON report for exactly these pins (no resolution, no pip)."""
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
        cmd = [
            sys.executable, "-m", "pip_audit",
            "--requirement", str(requirements),
            "--no-deps", "--disable-pip",
            "--format", "json", "--progress-spinner", "off", "--desc", "off",
        ]  # fmt: skip
        for vuln in ignore:
            cmd += ["--ignore-vuln", vuln]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        sys.stderr.write(proc.stderr)
        raise SystemExit(
            "audit FAILED: pip-audit produced no report (is PyPI reachable?) — see above"
        ) from None
    deps: list[dict[str, Any]] = report.get("dependencies", [])
    return deps


def project_page(name: str) -> dict[str, Any]:
    base = os.environ.get("TASKQ_AUDIT_PYPI_URL", "https://pypi.org").rstrip("/")
    with urllib.request.urlopen(f"{base}/pypi/{name}/json", timeout=30) as resp:  # noqa: S310
        data: dict[str, Any] = json.load(resp)
        return data


def fallback(name: str, version: str, ignore: list[str]) -> tuple[list[str] | None, str]:
    """Vulnerability ids for name==version from the project page, or None when unknown."""
    try:
        page = project_page(name)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"project page unreachable ({type(exc).__name__})"
    latest = page.get("info", {}).get("version")
    if latest != version:
        return None, f"per-release data unreachable and {version} is not the newest ({latest})"
    vulns = [
        v["id"]
        for v in page.get("vulnerabilities") or []
        if not v.get("withdrawn") and v["id"] not in ignore
        and not set(v.get("aliases") or []) & set(ignore)
    ]  # fmt: skip
    return vulns, "newest release: project page data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ignore-vuln", action="append", default=[], metavar="ID")
    args = parser.parse_args(argv)
    try:
        pins = runtime_closure()
    except md.PackageNotFoundError as exc:
        print(f"audit: {exc} is not installed; run `make deps` first", file=sys.stderr)
        return 2

    vulnerable: dict[str, list[str]] = {}
    unaudited: dict[str, str] = {}
    sources: dict[str, str] = {}
    for dep in pip_audit(pins, args.ignore_vuln):
        name, version = canonical(dep["name"]), dep.get("version") or pins.get(dep["name"], "")
        if dep.get("skip_reason"):
            ids, source = fallback(name, pins.get(name, version), args.ignore_vuln)
            if ids is None:
                unaudited[name] = source
                continue
            sources[name] = source
            if ids:
                vulnerable[f"{name}=={pins.get(name, version)}"] = ids
            continue
        sources[name] = "per-release data"
        if dep.get("vulns"):
            vulnerable[f"{name}=={version}"] = [v["id"] for v in dep["vulns"]]

    missing = set(pins) - set(sources) - set(unaudited)
    for name in sorted(missing):
        unaudited[name] = "absent from pip-audit's report"
    print(f"audit: {len(pins)} runtime dependencies of {PROJECT}")
    for name, version in pins.items():
        state = (
            "UNAUDITED: " + unaudited[name]
            if name in unaudited
            else ("VULNERABLE: " + ", ".join(vulnerable[f"{name}=={version}"]))
            if f"{name}=={version}" in vulnerable
            else f"ok ({sources[name]})"
        )
        print(f"  {name}=={version}: {state}")
    if vulnerable:
        print(f"audit FAILED: known vulnerabilities in {', '.join(vulnerable)}", file=sys.stderr)
    if unaudited:
        print(
            "audit FAILED: could not audit "
            + ", ".join(sorted(unaudited))
            + " — no vulnerability data, so no all-clear",
            file=sys.stderr,
        )
    if vulnerable or unaudited:
        return 1
    print("audit: no known vulnerabilities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
