"""Alembic environment for Flask-Migrate: the app's tables plus the Procrastinate schema."""

import logging
from logging.config import fileConfig

from alembic import context
from flask import current_app

from campaigns import logs

config = context.config
if logs.json_enabled():
    # alembic.ini's fileConfig would put its text handler back on the root logger;
    # create_app has set up the JSON one, and alembic logs at INFO through it.
    logs.configure()
else:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")

target_db = current_app.extensions["migrate"].db
if getattr(config.cmd_opts, "autogenerate", False):
    # The mock WhatsApp's tables are migrated everywhere (revision 0004); with mocks
    # off their models are not loaded, and autogenerate would propose dropping them.
    import mocks.models  # noqa: F401


def include_name(name, type_, parent_names):
    # Procrastinate's tables, types and functions are applied from its own SQL
    # (see the procrastinate_schema revision); they are not in our metadata, and
    # autogenerate must neither drop them nor report them as drift.
    if name and name.startswith("procrastinate"):
        return False
    return True


def run_migrations_offline():
    url = target_db.engine.url.render_as_string(hide_password=False)
    context.configure(
        url=url,
        target_metadata=target_db.metadata,
        literal_binds=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    def process_revision_directives(context, revision, directives):
        # Don't write an empty revision when autogenerate finds no change.
        if getattr(config.cmd_opts, "autogenerate", False):
            if directives[0].upgrade_ops.is_empty():
                directives[:] = []
                logger.info("No changes in schema detected.")

    conf_args = dict(current_app.extensions["migrate"].configure_args)
    conf_args.setdefault("process_revision_directives", process_revision_directives)

    with target_db.engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_db.metadata,
            include_name=include_name,
            **conf_args,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
