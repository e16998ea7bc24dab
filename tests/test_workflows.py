"""GitHub files, the rendered project's and the template's own: zizmor finds nothing,
actions are pinned to commits, Dependabot keeps the dependencies and actions fresh."""

import json
import re
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml
from conftest import DATABASES, ROOT

ZIZMOR = Path(sysconfig.get_path("scripts")) / "zizmor"
PINNED = re.compile(r"^\s*- uses: ([\w.-]+/[\w.-]+)@([0-9a-f]{40}) # (v\d+\.\d+\.\d+)$")


def github_files(root: Path) -> list[Path]:
    return [root / ".github/workflows/ci.yml", root / ".github/dependabot.yml"]


def zizmor(files: list[Path], cwd: Path) -> list[dict]:
    """zizmor's findings, offline, with no configuration or ignore file of its own;
    an invalid file fails instead of being skipped."""
    result = subprocess.run(
        [ZIZMOR, "--offline", "--no-config", "--strict-collection"]
        + ["--format", "json", *files],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    # Exit codes: 0 no finding, 1 and 2 failures, 10 and up findings by severity.
    assert result.returncode in (0, 10, 11, 12, 13, 14), result.stderr
    return json.loads(result.stdout)


def describe(findings: list[dict]) -> str:
    return "\n".join(
        f"{finding['ident']}: {finding['desc']} {finding['locations'][0]['symbolic']}"
        for finding in findings
    )


def test_zizmor_finds_nothing(render, tmp_path):
    files = github_files(ROOT)
    for database in DATABASES:  # postgresql adds a services block
        files += github_files(render(database=database))
    findings = zizmor(files, tmp_path)
    assert findings == [], describe(findings)


def test_zizmor_reports_the_faults_of_v0_1_0(tmp_path):
    """The check above can fail: on the rendered workflow of v0.1.0, zizmor reports
    unpinned actions, credentials persisted by checkout, default token permissions."""
    workflow = tmp_path / "ci.yml"
    workflow.write_text(V0_1_0_WORKFLOW)
    found = {finding["ident"] for finding in zizmor([workflow], tmp_path)}
    assert found == {"unpinned-uses", "artipacked", "excessive-permissions"}


def uses_lines(workflow: Path) -> list[str]:
    return [line for line in workflow.read_text().splitlines() if "uses:" in line]


def test_actions_are_pinned_to_the_same_commits(render):
    """Full commit hashes, with the release in a comment for Dependabot and readers.
    Dependabot updates the template's own workflow; the rendered one follows it."""
    own = uses_lines(ROOT / ".github/workflows/ci.yml")
    rendered = uses_lines(render() / ".github/workflows/ci.yml")
    pins = {}
    for line in own + rendered:
        action, commit, version = PINNED.match(line).groups()
        assert pins.setdefault(action, (commit, version)) == (commit, version), line
    assert {"actions/checkout", "actions/setup-python"} == set(pins)


def test_workflows_read_the_repository_only(render):
    for root in (ROOT, render()):
        workflow = yaml.safe_load((root / ".github/workflows/ci.yml").read_text())
        assert workflow["permissions"] == {"contents": "read"}
        for job in workflow["jobs"].values():
            assert "permissions" not in job
            checkout = next(s for s in job["steps"] if "checkout" in s.get("uses", ""))
            assert checkout["with"]["persist-credentials"] is False


@pytest.mark.parametrize("source", ["rendered", "template"])
def test_dependabot_updates_python_dependencies_and_actions(render, source):
    root = render() if source == "rendered" else ROOT
    config = yaml.safe_load((root / ".github/dependabot.yml").read_text())
    assert config["version"] == 2
    updates = {update["package-ecosystem"]: update for update in config["updates"]}
    assert set(updates) == {"pip", "github-actions"}
    for update in updates.values():
        assert update["directory"] == "/"
        assert update["schedule"]["interval"] == "weekly"
        assert update["groups"]


V0_1_0_WORKFLOW = """\
name: CI

on:
  push:
    branches: [main]
  pull_request:

jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
          cache: pip
      - run: python -m pip install -e '.[dev]'
      - run: pytest
"""
