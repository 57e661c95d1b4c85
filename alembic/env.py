"""Alembic environment for metaspace (one transaction for a whole upgrade or downgrade: it lands whole or not at all). Users never run ``alembic``: ``metaspace migrate`` builds the
configuration in code (metaspace.migrate) and hands the database URL in ``config.attributes``."""

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

VERSION_TABLE = "metaspace_schema_version"
VERSION_TABLE_SCHEMA = "public"

config = context.config


def run_offline() -> None:
    context.configure(
        dialect_name="postgresql",
        literal_binds=True,
        version_table=VERSION_TABLE,
        version_table_schema=VERSION_TABLE_SCHEMA,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    import psycopg

    url = config.attributes["url"]
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url), poolclass=NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            version_table=VERSION_TABLE,
            version_table_schema=VERSION_TABLE_SCHEMA,
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
