"""Shared helpers: render the template's working tree with copier's Python API."""

from pathlib import Path

import pytest
import yaml
from copier import run_copy

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = yaml.safe_load((ROOT / "copier.yml").read_text())
LAYOUTS = list(QUESTIONS["layout"]["choices"].values())
DATABASES = list(QUESTIONS["database"]["choices"].values())


def render_project(destination: Path, **answers) -> Path:
    """Render HEAD plus uncommitted changes, with defaults for unanswered questions."""
    run_copy(
        str(ROOT),
        destination,
        data=answers,
        defaults=True,
        vcs_ref="HEAD",
        quiet=True,
        unsafe=False,
    )
    return destination


@pytest.fixture
def render(tmp_path):
    """Render into a fresh folder: `render(layout="large")` returns its path."""
    counter = iter(range(1000))

    def _render(**answers) -> Path:
        return render_project(tmp_path / f"project-{next(counter)}", **answers)

    return _render
