"""The rendered README's "Add a resource" recipe, followed in every layout.

An `orders` resource (a quantity of one item, with a foreign key to items) is added
the way the recipe says: its model, schemas and views built on the shared core, one
registration line, a migration written by `flask db migrate` and applied unedited,
and its tests. Then the project's own suite (with its coverage gate), ruff, the
OpenAPI document and `flask db check` must all be satisfied, and deleting an item
that an order refers to must answer 409.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import LAYOUTS, render_project


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


MODEL = dedent("""
    class Order(Timestamps, db.Model):
        __tablename__ = "orders"

        id: Mapped[int] = mapped_column(primary_key=True)
        item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
        quantity: Mapped[int]
    """)
SCHEMAS = dedent('''
    class OrderSchema(Schema):
        """An order as clients send and receive it."""

        id = fields.Integer(dump_only=True)
        item_id = fields.Integer(
            required=True, validate=validate.Range(min=1, max=MAX_INT32)
        )
        quantity = fields.Integer(required=True, validate=validate.Range(min=1))
        created_at = fields.DateTime(dump_only=True)
        updated_at = fields.DateTime(dump_only=True)


    class OrderDataSchema(Schema):
        order = fields.Nested(OrderSchema, required=True)


    class OrderPageSchema(PageDataSchema):
        orders = fields.List(fields.Nested(OrderSchema), required=True)
    ''')
# Releases before 0.3.1 have no PageDataSchema: a page answer there is built on the
# paging query's schema, with its own total, as their READMEs said.
ORDERS_FIELD = "    orders = fields.List(fields.Nested(OrderSchema), required=True)\n"
SCHEMAS_BEFORE_0_3_1 = SCHEMAS.replace(
    f"(PageDataSchema):\n{ORDERS_FIELD}",
    f"(PageSchema):\n{ORDERS_FIELD}    total = fields.Integer(required=True)\n",
)
VIEWS = dedent('''
    orders_bp = APIBlueprint(
        "orders", __name__, url_prefix="/orders", description="Orders for items."
    )
    order_schema = OrderSchema()


    @orders_bp.route("", endpoint="orders")
    class OrderListAPI(MethodView):
        @orders_bp.arguments(PageSchema, location="query")
        @orders_bp.response(200, OrderPageSchema)
        @orders_bp.doc(operationId="listOrders")
        def get(self, paging: dict[str, int]) -> dict[str, Any]:
            """A page of orders."""
            orders, total = page_of(Order, **paging)
            return {"orders": orders, "total": total, **paging}

        @orders_bp.arguments(order_schema)
        @orders_bp.response(201, OrderDataSchema)
        @orders_bp.doc(operationId="createOrder")
        def post(self, values: dict[str, Any]) -> Response:
            """Order an item."""
            order = Order(**values)
            db.session.add(order)
            db.session.commit()
            response = row_response("order", order, order_schema, 201)
            response.headers["Location"] = url_for(".order", order_id=order.id)
            return response


    @orders_bp.route(f"/<int(min=1, max={MAX_INT32}):order_id>", endpoint="order")
    class OrderAPI(MethodView):
        @orders_bp.response(200, OrderDataSchema)
        @orders_bp.doc(operationId="getOrder")
        def get(self, order_id: int) -> Response:
            """One order."""
            return row_response("order", get_or_404(Order, order_id), order_schema)

        @orders_bp.response(200)
        @orders_bp.doc(operationId="deleteOrder")
        def delete(self, order_id: int) -> None:
            """Cancel an order."""
            db.session.delete(get_to_change(Order, order_id, order_schema))
            db.session.commit()
    ''')
TESTS = dedent('''
    """Orders: a quantity of one item."""


    def test_order_an_item(client, add_item):
        item = add_item("Lamp")
        response = client.post(
            "/api/v1/orders", json={"item_id": item["id"], "quantity": 2}
        )
        assert response.status_code == 201
        order = response.get_json()["data"]["order"]
        assert order["quantity"] == 2
        assert client.get(response.headers["Location"]).get_json()["data"] == {
            "order": order
        }
        page = client.get("/api/v1/orders").get_json()["data"]
        assert (page["orders"], page["total"]) == ([order], 1)


    def test_a_quantity_below_one_is_400(client, add_item):
        item = add_item("Lamp")
        response = client.post(
            "/api/v1/orders", json={"item_id": item["id"], "quantity": 0}
        )
        assert response.status_code == 400
        assert "quantity" in response.get_json()["data"]


    def test_an_order_for_no_item_is_409(client):
        response = client.post("/api/v1/orders", json={"item_id": 999, "quantity": 1})
        assert response.status_code == 409


    def test_an_ordered_item_is_not_deleted(client, add_item):
        item = add_item("Lamp")
        client.post("/api/v1/orders", json={"item_id": item["id"], "quantity": 1})
        response = client.delete(f"/api/v1/items/{item['id']}")
        assert response.status_code == 409
        assert response.get_json()["status"] == "fail"
        assert client.get(f"/api/v1/items/{item['id']}").status_code == 200


    def test_cancel_an_order(client, add_item):
        item = add_item("Lamp")
        order = client.post(
            "/api/v1/orders", json={"item_id": item["id"], "quantity": 1}
        ).get_json()["data"]["order"]
        assert client.delete(f"/api/v1/orders/{order['id']}").status_code == 200
        assert client.get(f"/api/v1/orders/{order['id']}").status_code == 404
        assert client.delete(f"/api/v1/items/{item['id']}").status_code == 200
    ''')
# What each part imports, written as the large layout's orders package would.
MODEL_IMPORTS = (
    "from sqlalchemy import ForeignKey\n"
    "from sqlalchemy.orm import Mapped, mapped_column\n\n"
    "from ..core.extensions import db\n"
    "from ..core.models import Timestamps\n"
)
SCHEMAS_IMPORTS = (
    "from marshmallow import Schema, fields, validate\n\n"
    "from ..core.schemas import MAX_INT32, PageDataSchema\n"
)
VIEWS_IMPORTS = (
    "from typing import Any\n\n"
    "from flask import Response, url_for\n"
    "from flask.views import MethodView\n\n"
    "from ..core.extensions import db\n"
    "from ..core.schemas import MAX_INT32, PageSchema\n"
    "from ..core.views import get_or_404, get_to_change, page_of, row_response\n"
    "from ..openapi import APIBlueprint\n"
    "from .models import Order\n"
    "from .schemas import OrderDataSchema, OrderPageSchema, OrderSchema\n"
)
REGISTRATION = "api_bp.register_blueprint(orders_bp)\n"
ITEMS_REGISTRATION = "api_bp.register_blueprint(items_bp)\n"


def project_imports_only(imports: str) -> str:
    """The third-party lines of an import block: within one package, the names of
    other modules of the project are imported by the layout's own lines."""
    return "".join(
        line + "\n"
        for line in imports.splitlines()
        if line.startswith(
            ("from typing", "from flask", "from sqlalchemy", "from marsh")
        )
    )


def add_before(path: Path, anchor: str, added: str) -> None:
    text = path.read_text()
    assert text.count(anchor) == 1, f"{anchor!r} is not unique in {path}"
    path.write_text(text.replace(anchor, added + anchor))


def add_imports(path: Path, imports: str) -> None:
    """Imports go below the module docstring; `ruff check --fix` merges and sorts."""
    text = path.read_text()
    end = text.index('"""', 3) + 4
    path.write_text(text[:end] + "\n" + imports + text[end:])


def add_orders(project: Path, layout: str) -> None:
    package = project / "shop"
    schemas, schemas_imports = SCHEMAS, SCHEMAS_IMPORTS
    if not any("class PageDataSchema(" in p.read_text() for p in project.rglob("*.py")):
        schemas = SCHEMAS_BEFORE_0_3_1
        schemas_imports = SCHEMAS_IMPORTS.replace("PageDataSchema", "PageSchema")
    if layout == "large":
        orders = package / "orders"
        orders.mkdir()
        (orders / "__init__.py").write_text('"""Orders: customers ordering items."""\n')
        for name, docstring, imports, code in [
            ("models", "The orders table.", MODEL_IMPORTS, MODEL),
            ("schemas", "What the orders API accepts.", schemas_imports, schemas),
            ("views", "The orders resource.", VIEWS_IMPORTS, VIEWS),
        ]:
            (orders / f"{name}.py").write_text(
                f'"""{docstring}"""\n\n{imports}\n\n{code}'
            )
        api = package / "api.py"
        add_imports(api, "from .orders.views import orders_bp\n")
        api.write_text(api.read_text() + REGISTRATION)
    elif layout == "single-module":
        for name, imports, code in [
            ("models", MODEL_IMPORTS, MODEL),
            ("schemas", schemas_imports, schemas),
        ]:
            module = package / f"{name}.py"
            add_imports(module, project_imports_only(imports))
            module.write_text(module.read_text() + "\n\n" + code)
        views = package / "views.py"
        add_imports(
            views,
            project_imports_only(VIEWS_IMPORTS)
            + "from .models import Order\n"
            + "from .schemas import OrderDataSchema, OrderPageSchema, OrderSchema\n",
        )
        add_before(views, 'api_bp = APIBlueprint("api"', VIEWS + "\n\n")
        views.write_text(views.read_text() + REGISTRATION)
    else:
        app = project / "app.py"
        add_imports(app, "from sqlalchemy import ForeignKey\n")
        add_before(
            app,
            'api_bp = APIBlueprint("api"',
            f"{MODEL}\n\n{schemas}\n\n{VIEWS}\n\n",
        )
        text = app.read_text()
        app.write_text(
            text.replace(ITEMS_REGISTRATION, ITEMS_REGISTRATION + REGISTRATION)
        )
    (project / "tests" / "test_orders.py").write_text(TESTS)


def run(project: Path, *command: str) -> str:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"TEST_DATABASE_URL", "DATABASE_URL", "APP_ENV"}
        and not key.startswith(("FLASK_", "PYTEST_", "COV_CORE_"))
    }
    result = subprocess.run(
        command, cwd=project, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def flask(project: Path, layout: str, *arguments: str) -> str:
    app = "app" if layout == "single-file" else "shop"
    return run(project, sys.executable, "-m", "flask", "--app", app, *arguments)


def git(project: Path, *arguments: str) -> str:
    return run(project, "git", *arguments)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_resource_recipe(tmp_path, layout):
    project = render_project(
        tmp_path / "project",
        project_name="Shop",
        layout=layout,
        docker=False,
        github_actions=False,
    )
    readme = (project / "README.md").read_text()
    recipe = readme[readme.index("## Add a resource") : readme.index("## Migrate")]
    assert REGISTRATION.strip() in recipe
    assert 'flask db migrate -m "create orders"' in recipe
    assert "ruff format . && ruff check --fix ." in recipe
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(
        project,
        "-c",
        "user.name=u",
        "-c",
        "user.email=u@example.com",
        "commit",
        "-qm",
        "r",
    )

    add_orders(project, layout)
    run(project, sys.executable, "-m", "ruff", "format", "-q", ".")
    run(project, sys.executable, "-m", "ruff", "check", "--fix", "-q", ".")
    git(project, "add", "-A")
    added = git(project, "diff", "--cached", "--numstat")

    flask(project, layout, "db", "upgrade")
    flask(project, layout, "db", "migrate", "-m", "create orders")
    (revision,) = (project / "migrations" / "versions").glob("*_create_orders.py")
    assert re.search(r"^\d{4}_\d{2}_\d{2}_\d{6}_\w+_create_orders\.py$", revision.name)
    assert "fk_orders_item_id_items" in revision.read_text()
    flask(project, layout, "db", "upgrade")
    flask(project, layout, "db", "check")

    run(project, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider")
    run(project, sys.executable, "-m", "ruff", "check", ".")
    run(project, sys.executable, "-m", "ruff", "format", "--check", ".")

    document = json.loads(flask(project, layout, "shop", "openapi"))
    assert {"get", "post"} <= set(document["paths"]["/api/v1/orders"])
    assert {"get", "delete"} <= set(document["paths"]["/api/v1/orders/{order_id}"])
    assert document["paths"]["/api/v1/orders"]["post"]["responses"]["409"]

    lines = sum(int(row.split()[0]) for row in added.splitlines())
    print(f"\n{layout}: the recipe added {lines} lines (migration not counted)")
