"""Alembic environment: the app's runner passes its connection; the CLI builds one from settings."""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from config import load_settings
from database import create_db_engine, include_on

config = context.config
target_metadata = SQLModel.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=include_on(connection.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    # Only the command line configures logging: inside the app it would replace the app's.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    settings = load_settings()
    engine = create_db_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            run_migrations(conn)
    finally:
        engine.dispose()
