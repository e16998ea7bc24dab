"""The template repository's own CI: when it runs, what it runs, with which history."""

import yaml
from conftest import ROOT

WORKFLOW = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
JOBS = WORKFLOW["jobs"]


def runs(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_runs_on_pushes_pull_requests_and_every_week():
    triggers = WORKFLOW[True]  # YAML 1.1 reads the key `on` as a boolean
    assert {"push", "pull_request", "schedule"} <= set(triggers)
    assert len(triggers["schedule"][0]["cron"].split()) == 5


def test_every_job_checks_out_the_tags():
    for name, job in JOBS.items():
        checkout = [
            s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout")
        ]
        assert checkout[0]["with"]["fetch-depth"] == 0, name


def nox_sessions(job: dict) -> set[str]:
    """Sessions a job runs by name; "default" for a bare `nox`."""
    sessions = set()
    for command in runs(job):
        words = command.split()
        if words[:1] == ["nox"]:
            sessions |= set(words[2:]) if words[1:2] == ["-s"] else {"default"}
    return sessions


def test_runs_nox_and_the_sessions_nox_leaves_out():
    sessions = set().union(*map(nox_sessions, JOBS.values()))
    expected = {"default", "update", "smoke", "postgres", "installs", "features"}
    assert expected <= sessions
    for job in JOBS.values():
        assert "python -m pip install nox uv pyyaml" in runs(job)


def test_postgres_sessions_get_a_real_database():
    job = next(job for job in JOBS.values() if "postgres" in nox_sessions(job))
    assert job["services"]["postgres"]["image"].startswith("postgres:")
    assert job["env"]["TEST_DATABASE_URL"].startswith("postgresql://")
