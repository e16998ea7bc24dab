"""Updating a project rendered from an earlier release, as a user would.

The project is rendered from the release's commit, then edited the way users edit:
a setting, a dependency, README text and a second resource (orders, with a foreign
key to items) in the large layout, each as that release's README says. It is
committed and updated to this working tree with `copier update --defaults`.
Conflicts may appear only where the user and the template changed the same lines;
CHANGELOG.md's "Updating from" section says what to do about each one expected.

From the previous release (0.3) and the one before (0.2) the user's edits meet no
conflict; from 0.1, whose settings and OpenAPI document 0.2 rebuilt, they meet the
ones in EXPECTED_CONFLICTS.
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT
from copier import run_copy, run_update
from test_grow import add_orders, flask
from test_update import CONFLICT_MARKERS, commit_all, git, git_init, tree

# The releases, by commit so that a clone without tags can run this too.
PREVIOUS_RELEASE = ("v0.3.0", "cc59d42e12cca3e8c807eb035b000239f993a1ad")
RELEASE_0_2 = ("v0.2.0", "c50653250926e68deb8c41b890bb946cb49f9929")
RELEASE_0_1 = ("v0.1.0", "e5d6fdc4e030da3ec58b8c51129e020482355bb9")
# Files where this release and the user's edits below touch the same lines, and
# how CHANGELOG.md's "Updating from 0.1" section says to resolve each.
EXPECTED_CONFLICTS = {
    "README.md",
    "shop/api.py",
    "shop/core/config.py",
    "shop/openapi.py",
    "tests/conftest.py",
}
TEMPLATE_SIDE = re.compile(
    r"^<<<<<<< before updating\n.*?^=======\n(.*?)^>>>>>>> after updating\n",
    re.MULTILINE | re.DOTALL,
)


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# The orders resource, written against the previous release's large layout.
ORDERS_FILES = {
    "shop/orders/__init__.py": '"""Orders: customers ordering items."""\n',
    "shop/orders/models.py": dedent('''
        """The orders table: each order is for a quantity of one item."""

        from sqlalchemy import ForeignKey
        from sqlalchemy.orm import Mapped, mapped_column

        from ..core.extensions import db


        class Order(db.Model):
            __tablename__ = "orders"

            id: Mapped[int] = mapped_column(primary_key=True)
            item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
            quantity: Mapped[int]
        '''),
    "shop/orders/schemas.py": dedent('''
        """What the orders API accepts and returns."""

        from marshmallow import Schema, fields, validate

        from ..items.schemas import MAX_INT32


        class OrderSchema(Schema):
            id = fields.Integer(dump_only=True)
            item_id = fields.Integer(
                required=True, validate=validate.Range(min=1, max=MAX_INT32)
            )
            quantity = fields.Integer(required=True, validate=validate.Range(min=1))
        '''),
    "shop/orders/views.py": dedent('''
        """The orders collection: every order, or a new one."""

        from flask import Blueprint, Response, current_app, request
        from flask.views import MethodView
        from sqlalchemy import select

        from ..core.extensions import db
        from ..core.responses import APIException, success
        from .models import Order
        from .schemas import OrderSchema

        orders_bp = Blueprint("orders", __name__, url_prefix="/orders")
        order_schema = OrderSchema()


        class OrderListAPI(MethodView):
            def get(self) -> Response:
                orders = db.session.scalars(select(Order).order_by(Order.id))
                return success({"orders": order_schema.dump(orders, many=True)})

            def post(self) -> Response:
                values = order_schema.load(request.get_json())
                if values["quantity"] > current_app.config["ORDER_LIMIT"]:
                    message = "Over the order limit."
                    raise APIException(message, 400, {"quantity": [message]})
                order = Order(**values)
                db.session.add(order)
                db.session.commit()
                return success({"order": order_schema.dump(order)}, 201)


        orders_bp.add_url_rule("", view_func=OrderListAPI.as_view("orders"))
        '''),
    "migrations/versions/7c1f0e2a9b4d_create_orders.py": dedent('''
        """Create the orders table.

        Revision ID: 7c1f0e2a9b4d
        Revises: 0001
        """

        import sqlalchemy as sa
        from alembic import op

        revision = "7c1f0e2a9b4d"
        down_revision = "0001"
        branch_labels = None
        depends_on = None


        def upgrade() -> None:
            op.create_table(
                "orders",
                sa.Column("id", sa.Integer(), nullable=False),
                sa.Column("item_id", sa.Integer(), nullable=False),
                sa.Column("quantity", sa.Integer(), nullable=False),
                sa.ForeignKeyConstraint(
                    ["item_id"], ["items.id"], name="fk_orders_item_id_items"
                ),
                sa.PrimaryKeyConstraint("id", name="pk_orders"),
            )


        def downgrade() -> None:
            op.drop_table("orders")
        '''),
    "tests/test_orders.py": dedent('''
        """Orders: create and list, within the order limit."""


        def test_order_an_item(client, add_item):
            item = add_item("Lamp")
            response = client.post(
                "/api/v1/orders", json={"item_id": item["id"], "quantity": 2}
            )
            assert response.status_code == 201
            order = response.json["data"]["order"]
            assert order["item_id"] == item["id"]
            assert client.get("/api/v1/orders").json["data"]["orders"] == [order]


        def test_over_the_order_limit_is_400(client, add_item):
            item = add_item("Lamp")
            response = client.post(
                "/api/v1/orders", json={"item_id": item["id"], "quantity": 101}
            )
            assert response.status_code == 400
            assert list(response.json["data"]) == ["quantity"]
        '''),
}
ORDERS_OPERATIONS = """\
    "api.orders.orders": {
        "get": {
            "operationId": "listOrders",
            "summary": "Every order.",
            "tags": ["orders"],
            "responses": {
                "200": json_response("The orders.", {"type": "object"}),
                **SERVER_ERRORS,
            },
        },
        "post": {
            "operationId": "createOrder",
            "summary": "Order an item.",
            "tags": ["orders"],
            "requestBody": json_request({"type": "object"}),
            "responses": {
                "201": json_response("Created.", {"type": "object"}),
                **WRITE_ERRORS,
            },
        },
    },
"""
# The orders resource as this release documents it: its views declared on an
# APIBlueprint (the OPERATIONS table is gone), the building blocks from core.
ORDERS_FILES_NOW = {
    "shop/orders/schemas.py": dedent('''
        """What the orders API accepts and returns."""

        from marshmallow import Schema, fields, validate

        from ..core.schemas import MAX_INT32


        class OrderSchema(Schema):
            id = fields.Integer(dump_only=True)
            item_id = fields.Integer(
                required=True, validate=validate.Range(min=1, max=MAX_INT32)
            )
            quantity = fields.Integer(required=True, validate=validate.Range(min=1))


        class OrderDataSchema(Schema):
            order = fields.Nested(OrderSchema, required=True)


        class OrdersSchema(Schema):
            orders = fields.List(fields.Nested(OrderSchema), required=True)
        '''),
    "shop/orders/views.py": dedent('''
        """The orders collection: every order, or a new one."""

        from typing import Any

        from flask import current_app
        from flask.views import MethodView
        from sqlalchemy import select

        from ..core.extensions import db
        from ..core.responses import APIException
        from ..openapi import APIBlueprint
        from .models import Order
        from .schemas import OrderDataSchema, OrderSchema, OrdersSchema

        orders_bp = APIBlueprint(
            "orders", __name__, url_prefix="/orders", description="Orders for items."
        )
        order_schema = OrderSchema()


        @orders_bp.route("", endpoint="orders")
        class OrderListAPI(MethodView):
            @orders_bp.response(200, OrdersSchema)
            @orders_bp.doc(operationId="listOrders")
            def get(self) -> dict[str, Any]:
                """Every order."""
                return {"orders": db.session.scalars(select(Order).order_by(Order.id))}

            @orders_bp.arguments(order_schema)
            @orders_bp.response(201, OrderDataSchema)
            @orders_bp.doc(operationId="createOrder")
            def post(self, values: dict[str, Any]) -> dict[str, Any]:
                """Order an item."""
                if values["quantity"] > current_app.config["ORDER_LIMIT"]:
                    message = "Over the order limit."
                    raise APIException(message, 400, {"quantity": [message]})
                order = Order(**values)
                db.session.add(order)
                db.session.commit()
                return {"order": order}
        '''),
}
# Lines the user adds to files the template owns: (file, anchor, added after it).
ORDERS_EDITS = [
    (
        "shop/api.py",
        "from .items.views import items_bp\n",
        "from .orders.views import orders_bp\n",
    ),
    (
        "shop/api.py",
        "api_bp.register_blueprint(items_bp)\n",
        "api_bp.register_blueprint(orders_bp)\n",
    ),
    (
        "shop/openapi.py",
        "\nOPERATIONS: dict[str, dict[str, dict[str, Any]]] = {\n",
        ORDERS_OPERATIONS,
    ),
    (
        "tests/test_openapi.py",
        '        "/api/v1/items": {"get", "post"},\n',
        '        "/api/v1/orders": {"get", "post"},\n',
    ),
]
SETTING_EDITS = [
    ("shop/core/config.py", "    OPENAPI_ENABLED = False\n", "    ORDER_LIMIT = 100\n"),
    (
        "shop/core/config.py",
        '    "OPENAPI_ENABLED": ("OPENAPI_ENABLED", boolean),\n',
        '    "ORDER_LIMIT": ("ORDER_LIMIT", non_negative_int),\n',
    ),
    ("tests/conftest.py", '    "OPENAPI_ENABLED",\n', '    "ORDER_LIMIT",\n'),
    (
        ".env.example",
        "# OPENAPI_ENABLED=true\n",
        "# Most of one item a single order may ask for.\nORDER_LIMIT=100\n",
    ),
]
DEPENDENCY_EDIT = ('    "python-dotenv>=1,<2",\n', '    "python-slugify>=8,<9",\n')
README_INTRO = "Shop sells lamps; this API takes the orders.\n\n"
README_SECTION = "\n## Orders\n\n`POST /api/v1/orders` orders an item.\n"


def add_after(project: Path, name: str, anchor: str, added: str) -> None:
    file = project / name
    text = file.read_text()
    assert text.count(anchor) == 1, f"{anchor!r} is not unique in {name}"
    file.write_text(text.replace(anchor, anchor + added))


def edit_like_a_user(project: Path) -> None:
    for name, content in ORDERS_FILES.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(content)
    for name, anchor, added in [*ORDERS_EDITS, *SETTING_EDITS]:
        add_after(project, name, anchor, added)
    add_after(project, "pyproject.toml", *DEPENDENCY_EDIT)
    readme = project / "README.md"
    title, rest = readme.read_text().split("\n\n", 1)
    readme.write_text(f"{title}\n\n{README_INTRO}{rest}{README_SECTION}")


def run_project_tests(project: Path) -> subprocess.CompletedProcess:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key != "TEST_DATABASE_URL"
        and not key.startswith(("FLASK_", "PYTEST_", "COV_CORE_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
    )


def conflicted(project: Path) -> set[str]:
    files = tree(project)
    rejected = {name.removesuffix(".rej") for name in files if name.endswith(".rej")}
    marked = {
        name
        for name, content in files.items()
        if any(line.startswith(CONFLICT_MARKERS) for line in content.splitlines())
    }
    return rejected | marked


def resolve_as_the_changelog_says(project: Path) -> None:
    """Keep the template's side of each conflict, then put the user's work back:
    the setting becomes one line of SETTINGS (its variable, the Config attribute
    and the isolation list are derived now), the README section goes last, the
    orders blueprint's import goes back beside the new one in the API module, and
    the orders views are declared on an APIBlueprint, which documents them (the
    OPERATIONS table is gone), with MAX_INT32 from core."""
    for name in EXPECTED_CONFLICTS:
        file = project / name
        file.write_text(TEMPLATE_SIDE.sub(r"\1", file.read_text()))
    add_after(
        project,
        "shop/core/config.py",
        '    Setting("OPENAPI_ENABLED", False, boolean),\n',
        '    Setting("ORDER_LIMIT", 100, non_negative_int),\n',
    )
    with (project / "README.md").open("a") as readme:
        readme.write(README_SECTION)
    add_after(project, "shop/api.py", *ORDERS_EDITS[0][1:])
    for name, content in ORDERS_FILES_NOW.items():
        (project / name).write_text(content)


def render_release(project: Path, release: tuple[str, str]) -> None:
    """Render the large layout of `release` into a git repository, as committed."""
    tag, commit = release
    run_copy(
        str(ROOT),
        project,
        vcs_ref=commit,
        data={"project_name": "Shop", "layout": "large"},
        defaults=True,
        unsafe=False,
        quiet=True,
    )
    git_init(project)
    commit_all(project, f"Render copier-flask-api {tag}")


def update_to_this_tree(project: Path) -> None:
    run_update(
        project,
        vcs_ref="HEAD",
        defaults=True,
        overwrite=True,
        unsafe=False,
        quiet=True,
        conflict="inline",
    )


# The user's edits to a 0.2 project, each as its README says: the setting is one
# line of SETTINGS and one of .env.example.
SETTING_0_2 = (
    "shop/core/config.py",
    '    Setting("OPENAPI_ENABLED", False, boolean),\n',
    '    Setting("ORDER_LIMIT", 100, non_negative_int),\n',
)
ENV_EXAMPLE_0_2 = (".env.example", *SETTING_EDITS[-1][1:])


@pytest.mark.parametrize("release", [PREVIOUS_RELEASE, RELEASE_0_2], ids=lambda r: r[0])
def test_update_from_the_previous_release_keeps_the_users_work(tmp_path, release):
    project = tmp_path / "shop"
    render_release(project, release)
    add_orders(project, "large")
    flask(project, "large", "db", "upgrade")
    flask(project, "large", "db", "migrate", "-m", "create orders")
    for name, anchor, added in [SETTING_0_2, ENV_EXAMPLE_0_2]:
        add_after(project, name, anchor, added)
    add_after(project, "pyproject.toml", *DEPENDENCY_EDIT)
    readme = project / "README.md"
    title, rest = readme.read_text().split("\n\n", 1)
    readme.write_text(f"{title}\n\n{README_INTRO}{rest}{README_SECTION}")
    for ruff in (["format"], ["check", "--fix"]):
        command = [sys.executable, "-m", "ruff", *ruff, "-q", "."]
        subprocess.run(command, cwd=project, check=True)
    before = run_project_tests(project)
    assert before.returncode == 0, before.stdout[-3000:] + before.stderr[-3000:]
    commit_all(project, "Orders, an order limit, a dependency, README text")
    users_files = tree(project)

    update_to_this_tree(project)

    assert conflicted(project) == set()
    files = tree(project)
    for name in (project / "shop" / "orders").glob("*.py"):
        relative = str(name.relative_to(project))
        assert files[relative] == users_files[relative], relative
    (revision,) = (project / "migrations" / "versions").glob("*_create_orders.py")
    assert revision.read_bytes() == users_files[str(revision.relative_to(project))]
    assert "api_bp.register_blueprint(orders_bp)\n" in files["shop/api.py"].decode()
    assert SETTING_0_2[2] in files["shop/core/config.py"].decode()
    assert ENV_EXAMPLE_0_2[2] in files[".env.example"].decode()
    assert DEPENDENCY_EDIT[1] in files["pyproject.toml"].decode()
    assert README_INTRO in files["README.md"].decode()
    assert files["README.md"].decode().endswith(README_SECTION)
    after = run_project_tests(project)
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]


def test_update_from_0_1_keeps_the_users_work(tmp_path):
    project = tmp_path / "shop"
    render_release(project, RELEASE_0_1)
    edit_like_a_user(project)
    before = run_project_tests(project)
    assert before.returncode == 0, before.stdout[-3000:] + before.stderr[-3000:]
    commit_all(project, "Orders, an order limit, a dependency, README text")
    users_files = tree(project)

    update_to_this_tree(project)

    assert conflicted(project) == EXPECTED_CONFLICTS
    assert git(project, "status", "--porcelain")  # the update changed something
    files = tree(project)
    for name in ORDERS_FILES:
        assert files[name] == users_files[name], name
    for name, anchor, added in ORDERS_EDITS:
        if name not in EXPECTED_CONFLICTS:
            assert anchor + added in files[name].decode(), (name, added)
    assert SETTING_EDITS[-1][2] in files[".env.example"].decode()
    assert DEPENDENCY_EDIT[1] in files["pyproject.toml"].decode()
    assert README_INTRO in files["README.md"].decode()
    resolve_as_the_changelog_says(project)
    assert conflicted(project) == set()
    assert (project / "README.md").read_text().endswith(README_SECTION)
    after = run_project_tests(project)
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]
