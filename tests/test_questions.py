"""copier.yml: defaults that work unattended, and validators that explain refusals."""

import ast
import re

import pytest
from conftest import QUESTIONS, render_project

TRUST_NEEDED = ("_tasks", "_migrations", "_jinja_extensions")


def test_nothing_needs_trust():
    assert not set(TRUST_NEEDED) & set(QUESTIONS)


def test_copier_settings():
    assert QUESTIONS["_subdirectory"] == "template"
    assert QUESTIONS["_answers_file"] == ".copier-answers.yml"
    assert re.fullmatch(r"\d+\.\d+\.\d+", QUESTIONS["_min_copier_version"])
    assert "flask db upgrade" in QUESTIONS["_message_after_copy"]


def test_every_question_has_a_default_and_help():
    questions = {k: v for k, v in QUESTIONS.items() if not k.startswith("_")}
    for name, question in questions.items():
        assert "default" in question, name
        if question.get("when") is not False:
            assert question.get("help"), name


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({"project_name": "Acme Orders API!"}, ("acme-orders-api", "acme_orders_api")),
        ({"project_name": "  Pets  "}, ("pets", "pets")),
        ({"project_slug": "shop-2"}, ("shop-2", "shop_2")),
    ],
)
def test_slug_and_package_derive_from_earlier_answers(render, answers, expected):
    project = render(**answers)
    text = (project / ".copier-answers.yml").read_text()
    slug, package = expected
    assert f"project_slug: {slug}\n" in text
    assert f"package_name: {package}\n" in text


BAD_ANSWERS = [
    ("project_name", "", "must not be empty"),
    ("project_name", 'Say "hi"', "must not contain double quotes"),
    ("project_name", "x" * 61, "at most 60 characters"),
    ("project_slug", "a" * 41, "at most 40 characters"),
    ("package_name", "a" * 41, "at most 40 characters"),
    ("project_slug", "My-API", "is not a valid slug"),
    ("project_slug", "my_api", "is not a valid slug"),
    ("project_slug", "-api", "is not a valid slug"),
    ("project_slug", "api-", "is not a valid slug"),
    ("project_slug", "my--api", "is not a valid slug"),
    ("project_slug", "1api", "is not a valid slug"),
    ("project_slug", "db", "would hide Flask's own `flask db` command"),
    ("project_slug", "routes", "would hide Flask's own `flask routes` command"),
    ("package_name", "My_Api", "is not a valid package name"),
    ("package_name", "my-api", "is not a valid package name"),
    ("package_name", "2api", "is not a valid package name"),
    ("package_name", "class", "is a Python keyword"),
    ("package_name", "lambda", "is a Python keyword"),
    ("package_name", "flask", "would shadow the module"),
    ("package_name", "app", "would shadow the module"),
    ("package_name", "test", "would shadow the module"),
    ("package_name", "marshmallow", "would shadow the module"),
    ("package_name", "logging", "would shadow the module"),
    ("package_name", "sqlalchemy", "would shadow the module"),
    ("description", "a\\b", "must not contain"),
    ("description", "  ", "must not be empty"),
    ("author_name", "   ", "must not be empty"),
    ("author_email", "nobody", "is not a valid e-mail address"),
    ("author_email", "a@b", "is not a valid e-mail address"),
    ("author_email", "a b@example.com", "is not a valid e-mail address"),
    ("layout", "huge", "Invalid choice"),
    ("database", "mysql", "Invalid choice"),
    ("python_version", "3.10", "Invalid choice"),
    ("license", "GPL", "Invalid choice"),
    ("auth", "oauth", "Invalid choice"),
]


@pytest.mark.parametrize(("question", "value", "message"), BAD_ANSWERS)
def test_bad_answers_are_refused_with_what_is_allowed(
    tmp_path, question, value, message
):
    with pytest.raises(ValueError, match=re.escape(message)):
        render_project(tmp_path / "project", **{question: value})
    assert not (tmp_path / "project" / "pyproject.toml").exists()


@pytest.mark.parametrize(
    ("question", "value"),
    [
        ("project_slug", "a"),
        ("project_slug", "orders-api-v2"),
        ("package_name", "_private_api"),
        ("package_name", "flask_orders"),
        ("author_email", "first.last+api@mail.example.co.uk"),
    ],
)
def test_good_answers_are_accepted(render, question, value):
    project = render(**{question: value})
    assert (project / "pyproject.toml").exists()


def shadowing_names() -> set[str]:
    """The names the package_name validator refuses as shadowing."""
    validator = QUESTIONS["package_name"]["validator"]
    listed = re.search(r"set shadowing = (\[.*?\]) %\}", validator, re.S).group(1)
    return set(ast.literal_eval(listed))


@pytest.mark.parametrize(
    ("layout", "auth"), [("single-file", "jwt"), ("large", "api-key"), ("large", "jwt")]
)
def test_every_module_the_project_imports_is_refused_as_a_package_name(
    render, layout, auth
):
    project = render(layout=layout, database="postgresql", auth=auth, rate_limit=True)
    imported = set()
    for path in project.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    imported -= {"app", "my_api"}
    assert imported - shadowing_names() == set()
