"""Render every combination of the feature questions, then build each app.

Run by `nox -s features`, in a virtualenv with copier (and, for `build`, every
dependency of the rendered projects):

    python tests/features.py render FOLDER COMBINATIONS.json
    python tests/features.py build FOLDER

`render` renders this working tree (uncommitted changes included) once per entry
of COMBINATIONS.json, a list of [folder name, answers], all in one process and from
a plain copy of the template: copier renders a folder that is not a git repository
as it is, where it would clone a repository for every render. `build` imports each
project's app, builds it with the testing settings and asks it for /health, also in
one process: an import that is wrong for one layout fails here.
"""

import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from copier import run_copy

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PARTS = ("copier.yml", "template", "includes")


def render(folder: Path, combinations: list[tuple[str, dict]]) -> None:
    with tempfile.TemporaryDirectory() as copy:
        for part in TEMPLATE_PARTS:
            source, target = ROOT / part, Path(copy) / part
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.pyc"))
            else:
                shutil.copy2(source, target)
        for name, answers in combinations:
            run_copy(copy, folder / name, data=answers, defaults=True, quiet=True)
    print(f"features: {len(combinations)} combinations rendered in {folder}")


def build(folder: Path) -> None:
    projects = sorted(path.parent for path in folder.glob("*/.copier-answers.yml"))
    for project in projects:
        answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
        name = "app" if answers["layout"] == "single-file" else answers["package_name"]
        sys.path.insert(0, str(project))
        try:
            module = importlib.import_module(name)
            response = module.create_app("testing").test_client().get("/health")
            if response.status_code != 200:
                raise SystemExit(
                    f"features: {project.name}: /health answered "
                    f"{response.status_code}: {response.get_data(as_text=True)}"
                )
        finally:
            # The next project's package has the same name.
            sys.path.remove(str(project))
            for loaded in [m for m in sys.modules if m.split(".")[0] == name]:
                del sys.modules[loaded]
    print(f"features: {len(projects)} apps built and answered /health")


if __name__ == "__main__":
    command, folder, *rest = sys.argv[1:]
    if command == "render":
        render(Path(folder), json.loads(Path(rest[0]).read_text()))
    else:
        build(Path(folder))
