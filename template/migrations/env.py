"""Alembic environment: migrations run on the application's own engine and models."""

import logging
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from flask import current_app
from sqlalchemy.types import TypeDecorator

logger = logging.getLogger("alembic.env")
config = context.config
db = current_app.extensions["migrate"].db
config.set_main_option(
    "sqlalchemy.url",
    db.engine.url.render_as_string(hide_password=False).replace("%", "%%"),
)


def render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Write a custom column type as the database type it stores.

    Autogenerate would otherwise write the app's own class by its module path
    (`<module>.UTCDateTime(...)`), which nothing in the revision imports, and
    the upgrade would fail with a NameError. A revision should not import app code
    anyway: the class may change or move after the revision is written. This covers
    types over SQLAlchemy's generic ones (`sa.DateTime(...)`); over a dialect's type
    (`postgresql.JSONB`) or a nested one (`sa.ARRAY(sa.Integer())`), add its import
    or prefix to the revision by hand.
    """
    if kind == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


def run_migrations_offline() -> None:
    """Print the SQL (`flask db upgrade --sql`) instead of running it."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=db.metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    def skip_empty_revision(context, revision, directives) -> None:
        """Write no revision file when autogenerate finds nothing to change."""
        autogenerate = getattr(config.cmd_opts, "autogenerate", False)
        if autogenerate and directives[0].upgrade_ops.is_empty():
            directives[:] = []
            logger.info("No changes in schema detected.")

    configure_args = current_app.extensions["migrate"].configure_args
    configure_args.setdefault("process_revision_directives", skip_empty_revision)
    configure_args.setdefault("render_item", render_item)
    with db.engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=db.metadata, **configure_args
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
