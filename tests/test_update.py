"""copier update: template fixes arrive and the user's own work survives.

Each test builds its template versions in a throwaway git repository (copier.yml,
template/ and includes/ copied from this working tree, then tagged v1.0.0, changed
and tagged v1.1.0), so nothing needs the network or this repository's own tags.
`copier update` exits 0 even when it conflicts, so every test inspects the result.
"""

import os
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from copier import run_copy, run_update
from packaging.requirements import Requirement
from test_grow import add_orders, flask, run

TEMPLATE_PARTS = ("copier.yml", "template", "includes")
CONFLICT_MODES = ("rej", "inline")
CONFLICT_MARKERS = (b"<<<<<<<", b">>>>>>>")
ANSWERS = {"project_name": "Shop", "author_name": "Ada Lovelace"}


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout


def git_init(path: Path) -> None:
    git(path, "init", "--quiet")
    git(path, "config", "user.name", "Template Tests")
    git(path, "config", "user.email", "tests@example.com")


def commit_all(path: Path, message: str) -> None:
    git(path, "add", "--all")
    git(path, "commit", "--quiet", "--allow-empty", "--message", message)


class TemplateRepo:
    """A private git repository holding versions of this template."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir()
        listed = git(
            ROOT,
            "ls-files", "-z", "--cached", "--others", "--exclude-standard",
            "--", *TEMPLATE_PARTS,
        )  # fmt: skip
        for name in filter(None, listed.split("\0")):
            source = ROOT / name
            if source.is_file():  # not a tracked file deleted in the working tree
                (path / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, path / name)
        git_init(path)

    def release(self, tag: str) -> None:
        commit_all(self.path, f"Release {tag}")
        git(self.path, "tag", tag)

    def replace(self, name: str, old: str, new: str) -> None:
        """Edit one file of the template; `old` must occur exactly once."""
        file = self.path / name
        text = file.read_text()
        assert text.count(old) == 1, f"{old!r} is not unique in {name}"
        file.write_text(text.replace(old, new))

    def rename_everywhere(self, old: str, new: str) -> int:
        """Replace a word in every file of the template; return how many files."""
        changed = 0
        for file in sorted(self.path.rglob("*")):
            if ".git" in file.relative_to(self.path).parts or not file.is_file():
                continue
            text = file.read_text()
            if old in text:
                file.write_text(text.replace(old, new))
                changed += 1
        return changed


@pytest.fixture
def template(tmp_path) -> TemplateRepo:
    """This template, released as v1.0.0 in a private repository."""
    repo = TemplateRepo(tmp_path / "template")
    repo.release("v1.0.0")
    return repo


def render(template: TemplateRepo, destination: Path, ref: str, **answers) -> Path:
    run_copy(
        str(template.path),
        destination,
        vcs_ref=ref,
        data=answers,
        defaults=True,
        unsafe=False,
        quiet=True,
    )
    return destination


def start_project(template: TemplateRepo, destination: Path, **answers) -> Path:
    """Render v1.0.0 and commit it, as a user does before working on it."""
    project = render(template, destination, "v1.0.0", **ANSWERS, **answers)
    git_init(project)
    commit_all(project, "Render the template")
    return project


def update(project: Path, ref: str, conflict: str = "rej", **answers) -> None:
    run_update(
        project,
        vcs_ref=ref,
        data=answers,
        defaults=True,
        overwrite=True,
        unsafe=False,
        quiet=True,
        conflict=conflict,
    )


def tree(project: Path) -> dict[str, bytes]:
    """Every file of a project but git's own, by relative path."""
    return {
        path.relative_to(project).as_posix(): path.read_bytes()
        for path in sorted(project.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(project).parts
    }


def answers_of(project: Path) -> dict:
    return yaml.safe_load((project / ".copier-answers.yml").read_text())


def assert_no_conflicts(project: Path) -> None:
    files = tree(project)
    assert not [name for name in files if name.endswith(".rej")]
    marked = [
        name
        for name, content in files.items()
        if any(line.startswith(CONFLICT_MARKERS) for line in content.splitlines())
    ]
    assert not marked, f"conflict markers in {marked}"


# The user's own work on a rendered single-module project named "Shop".
NEW_MODULE = ("shop/reports.py", '"""Sales reports: the user\'s own module."""\n')
APPENDED = '\n\ndef report_title() -> str:\n    return "Shop reports"\n'
FLASK_BOUND = ('"Flask>=3.1,<4"', '"Flask>=3.1.2,<4"')
USER_DELETED = "compose.yaml"


def edit_like_a_user(project: Path) -> None:
    """A new module, a line added to a template-owned file, a dependency bound
    changed, and a template file the user has no use for deleted."""
    name, content = NEW_MODULE
    (project / name).write_text(content)
    with (project / "shop/config.py").open("a") as config:
        config.write(APPENDED)
    pyproject = project / "pyproject.toml"
    old, new = FLASK_BOUND
    assert old in pyproject.read_text()
    pyproject.write_text(pyproject.read_text().replace(old, new))
    (project / USER_DELETED).unlink()


def assert_user_edits_survive(project: Path) -> None:
    name, content = NEW_MODULE
    assert (project / name).read_text() == content
    assert (project / "shop/config.py").read_text().endswith(APPENDED)
    pyproject = (project / "pyproject.toml").read_text()
    assert FLASK_BOUND[1] in pyproject and FLASK_BOUND[0] not in pyproject
    assert not (project / USER_DELETED).exists()


def release_a_template_fix(template: TemplateRepo) -> None:
    """v1.1.0: edits in files the user also edited (away from the user's lines),
    an unchanged file rewritten, a file added and a file dropped."""
    template.replace(
        "includes/code/config.py.jinja",
        '    Setting("MAX_CONTENT_LENGTH", 1024 * 1024, non_negative_int),',
        '    Setting("MAX_CONTENT_LENGTH", 2 * 1024 * 1024, non_negative_int),',
    )
    template.replace(
        "template/pyproject.toml.jinja",
        '"SIM", "UP", "W"]',
        '"SIM", "UP", "W", "RUF"]',
    )
    template.replace(
        "template/gunicorn.conf.py.jinja", "timeout = 30\n", "timeout = 60\n"
    )
    (template.path / "template/.editorconfig").write_text("root = true\n")
    (template.path / "template/{% if docker %}.dockerignore{% endif %}").unlink()
    template.release("v1.1.0")


def test_update_to_the_same_version_changes_nothing(template, tmp_path):
    project = start_project(template, tmp_path / "project")
    edit_like_a_user(project)
    commit_all(project, "The user's own work")
    before = tree(project)

    update(project, "v1.0.0")

    assert git(project, "status", "--porcelain") == ""
    assert tree(project) == before


@pytest.mark.parametrize("conflict", CONFLICT_MODES)
def test_update_applies_the_template_fix_and_keeps_user_edits(
    template, tmp_path, conflict
):
    project = start_project(template, tmp_path / "project")
    edit_like_a_user(project)
    commit_all(project, "The user's own work")
    release_a_template_fix(template)

    update(project, "v1.1.0", conflict=conflict)

    assert_no_conflicts(project)
    assert (
        'Setting("MAX_CONTENT_LENGTH", 2 * 1024 * 1024, non_negative_int)'
        in (project / "shop/config.py").read_text()
    )
    assert '"W", "RUF"]' in (project / "pyproject.toml").read_text()
    assert "timeout = 60\n" in (project / "gunicorn.conf.py").read_text()
    assert (project / ".editorconfig").read_text() == "root = true\n"
    assert not (project / ".dockerignore").exists()
    assert answers_of(project)["_commit"] == "v1.1.0"
    assert_user_edits_survive(project)
    # Exactly a fresh render of v1.1.0 with the user's edits made on it.
    expected = render(template, tmp_path / "expected", "v1.1.0", **ANSWERS)
    edit_like_a_user(expected)
    assert tree(project) == tree(expected)


def requirements_to_run_tests(project: Path) -> list[str]:
    """What a rendered project needs to run its own pytest: its dependencies and
    its dev dependencies but the linter."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    dev = pyproject["dependency-groups"]["dev"]
    testing = [spec for spec in dev if Requirement(spec).name != "ruff"]
    return pyproject["project"]["dependencies"] + testing


def unmet(requirements: list[str]) -> list[str]:
    """The requirements this interpreter does not satisfy."""
    missing = []
    for spec in map(Requirement, requirements):
        try:
            installed = version(spec.name)
        except PackageNotFoundError:
            installed = None
        if installed is None or not spec.specifier.contains(installed, True):
            missing.append(f"{spec} (installed: {installed})")
    return missing


def test_test_group_installs_what_a_rendered_project_needs(render):
    """The `rendered` dependency group of pyproject.toml, which the nox sessions
    install, carries the rendered sqlite project's own bounds."""
    project = render()
    group = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    assert {"include-group": "rendered"} in group["test"]
    pytest_spec = [spec for spec in group["test"] if str(spec).startswith("pytest")]
    installed = group["rendered"] + pytest_spec
    assert sorted(installed) == sorted(requirements_to_run_tests(project))


def test_update_switching_layout_removes_the_old_layout(template, tmp_path):
    project = start_project(template, tmp_path / "project")
    name, content = NEW_MODULE
    (project / name).write_text(content)
    commit_all(project, "The user's own module")
    old_files = set(tree(project))

    update(project, "v1.0.0", layout="large")

    assert_no_conflicts(project)
    assert answers_of(project)["layout"] == "large"
    assert not (project / "shop/views.py").exists()
    assert (project / "shop/items/views.py").is_file()
    # Exactly the large layout's files, plus the user's own module.
    expected = render(
        template, tmp_path / "expected", "v1.0.0", **ANSWERS, layout="large"
    )
    assert set(tree(project)) == set(tree(expected)) | {name}
    stale = old_files - set(tree(expected)) - {name}
    assert stale and not [file for file in stale if (project / file).exists()]
    assert (project / name).read_text() == content
    # The project's own tests pass in the new layout.
    assert not unmet(requirements_to_run_tests(project))
    environment = {
        key: value
        for key, value in os.environ.items()
        if key != "TEST_DATABASE_URL"
        and not key.startswith(("FLASK_", "PYTEST_", "COV_CORE_"))
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_update_turning_a_feature_on_adds_it_and_keeps_user_edits(template, tmp_path):
    project = start_project(template, tmp_path / "project")
    edit_like_a_user(project)
    commit_all(project, "The user's own work")

    update(project, "v1.0.0", rate_limit=True)

    assert_no_conflicts(project)
    assert answers_of(project)["rate_limit"] is True
    assert (project / "tests/test_rate_limit.py").is_file()
    # Exactly a fresh render with the feature on, with the user's edits made on it.
    expected = render(
        template, tmp_path / "expected", "v1.0.0", **ANSWERS, rate_limit=True
    )
    edit_like_a_user(expected)
    assert tree(project) == tree(expected)


def grow_orders(project: Path) -> None:
    """Orders by the README's recipe in a large project, with the revision
    `flask db migrate` writes, committed."""
    add_orders(project, "large")
    for ruff in (["format"], ["check", "--fix"]):  # as the README's recipe says
        subprocess.run([sys.executable, "-m", "ruff", *ruff, "-q", "."], cwd=project)
    flask(project, "large", "db", "upgrade")
    flask(project, "large", "db", "migrate", "-m", "create orders")
    commit_all(project, "Orders")


def reapply_orders_registration(project: Path) -> None:
    """Turning auth on or off changes the guard on the API blueprint, in the lines
    the user added orders to: copier keeps the template's side and leaves the user's
    hunk in a .rej, which the user applies again."""
    rejected = project / "shop/api.py.rej"
    assert [p for p in tree(project) if p.endswith(".rej")] == ["shop/api.py.rej"]
    assert "+api_bp.register_blueprint(orders_bp)" in rejected.read_text()
    rejected.unlink()
    api = project / "shop/api.py"
    api.write_text(
        api.read_text().replace(
            "from .openapi import APIBlueprint\n",
            "from .openapi import APIBlueprint\nfrom .orders.views import orders_bp\n",
        )
        + "api_bp.register_blueprint(orders_bp)\n"
    )


def failed_upgrade(project: Path) -> str:
    """What `flask db upgrade` says when it fails, as it must here."""
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "shop", "db", "upgrade"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    return result.stderr


def test_update_adding_a_migration_after_the_users_own_joins_them_as_the_readme_says(
    template, tmp_path
):
    """The user's revision and the API keys table's both follow 0001: after the
    update `flask db upgrade` refuses the two heads, and the README's merge joins
    them, with the schema matching the models and the suite passing."""
    project = start_project(template, tmp_path / "project", layout="large")
    grow_orders(project)

    update(project, "v1.0.0", auth="api-key")

    reapply_orders_registration(project)
    assert_no_conflicts(project)
    readme = (project / "README.md").read_text()
    merge = 'flask db merge heads -m "merge the template\'s migrations"'
    assert f"{merge}\nflask db upgrade\n" in readme
    assert "Multiple head revisions" in failed_upgrade(project)
    flask(project, "large", "db", "merge", "heads", "-m", "merge")
    flask(project, "large", "db", "upgrade")
    flask(project, "large", "db", "check")
    suite = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    run(project, *suite)


def test_update_turning_api_keys_off_keeps_the_migrations_as_the_readme_says(
    template, tmp_path
):
    """Turning `auth=api-key` off deletes the API keys table's migration, which the
    database and the user's own revision follow: `flask db upgrade` fails until the
    README's steps bring the file back and drop the table, and then the schema
    matches the models and the suite passes."""
    layout = "large"
    project = start_project(
        template, tmp_path / "project", layout=layout, auth="api-key"
    )
    grow_orders(project)
    flask(project, layout, "db", "upgrade")
    # The README of an api-key project says what turning the keys off takes.
    api_keys_migration = "migrations/versions/0002_create_api_keys.py"
    steps = (
        f"git checkout HEAD -- {api_keys_migration}\n"
        'flask db migrate -m "drop the api keys table"\n'
        "flask db upgrade\n"
    )
    assert steps in (project / "README.md").read_text()

    update(project, "v1.0.0", auth="none")

    reapply_orders_registration(project)
    assert_no_conflicts(project)
    assert not (project / api_keys_migration).exists()
    assert "KeyError: '0002'" in failed_upgrade(project)
    git(project, "checkout", "HEAD", "--", api_keys_migration)
    flask(project, layout, "db", "migrate", "-m", "drop the api keys table")
    flask(project, layout, "db", "upgrade")
    flask(project, layout, "db", "check")
    suite = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    run(project, *suite)


def test_added_and_renamed_questions_keep_earlier_answers(template, tmp_path):
    project = start_project(template, tmp_path / "project", layout="large")
    # v1.1.0 asks a new question and renames `author_name` to `copyright_holder`;
    # the new name's default reads the old answer, which copier still has in
    # the rendering context while it updates.
    assert template.rename_everywhere("author_name", "copyright_holder") >= 2
    template.replace(
        "copier.yml",
        "  default: Your Name\n",
        "  default: \"{{ author_name | default('Your Name') }}\"\n",
    )
    with (template.path / "copier.yml").open("a") as copier_yml:
        copier_yml.write(
            "\napi_prefix:\n  type: str\n  help: Where the API is mounted\n"
            "  default: /api/v1\n"
        )
    template.release("v1.1.0")

    update(project, "v1.1.0")

    assert_no_conflicts(project)
    answers = answers_of(project)
    assert answers["copyright_holder"] == "Ada Lovelace"
    assert "author_name" not in answers  # a question that is gone is dropped
    assert answers["api_prefix"] == "/api/v1"
    assert answers["project_name"] == "Shop"
    assert answers["layout"] == "large"
    assert "Ada Lovelace" in (project / "LICENSE").read_text()
    assert git(project, "status", "--porcelain") == " M .copier-answers.yml\n"
    # A fresh render of the new version still defaults the renamed question.
    fresh = render(template, tmp_path / "fresh", "v1.1.0", project_name="Shop")
    assert answers_of(fresh)["copyright_holder"] == "Your Name"
