"""The ``ranqi`` console script: a Flask CLI group over :func:`portal.create_app`."""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import FlaskGroup, with_appcontext

from models import ledger, migrate
from portal import db


def _create_app() -> Flask:
    from portal import create_app

    return create_app()


@click.group(
    cls=FlaskGroup, create_app=_create_app, add_default_commands=True, add_version_option=False
)
def main() -> None:
    """Ranqi (燃气) operator commands."""


def init_app(app: Flask) -> None:
    app.cli.add_command(db_group)
    app.cli.add_command(demo_command)
    app.cli.add_command(ledger_group)
    app.cli.add_command(jobs_group)
    app.cli.add_command(serve_command)
    app.cli.add_command(kiosks_group)
    from portal.cli_demo_cards import demo_cards_command

    app.cli.add_command(demo_cards_command)
    from portal import cli_imports

    app.cli.add_command(cli_imports.import_group)


@click.group("db")
def db_group() -> None:
    """Database schema (Alembic migrations)."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Create or migrate the schema to REVISION."""
    engine = db.database().engine
    if engine.dialect.name == "sqlite" and engine.url.database:
        from pathlib import Path

        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(engine, revision)
    click.echo(f"database at {migrate.current(engine)}")


@db_group.command("current")
@with_appcontext
def db_current() -> None:
    """Print the schema revision."""
    click.echo(migrate.current(db.database().engine) or "empty")


@click.command("demo")
@with_appcontext
def demo_command() -> None:
    """Fill the database with the demo utility (idempotent)."""
    from models import demo

    session = db.session()
    summary = demo.load(session)
    session.commit()
    click.echo(summary)


@click.group("ledger")
def ledger_group() -> None:
    """The ledger of money and gas."""


@ledger_group.command("check")
@with_appcontext
def ledger_check() -> None:
    """Verify the ledger's invariants; exit 1 and list the offending entries if one breaks."""
    problems = ledger.check(db.session())
    if problems:
        for problem in problems:
            click.echo(str(problem), err=True)
        click.echo(f"ledger check FAILED: {len(problems)} problem(s)", err=True)
        sys.exit(1)
    click.echo("ledger check passed")


@click.group("jobs")
def jobs_group() -> None:
    """Background jobs: expire unpaid orders, query stale ones."""


@jobs_group.command("run")
@click.option("--once", is_flag=True, help="one round, then exit")
@click.option("--interval", default=10.0, show_default=True, help="seconds between rounds")
@with_appcontext
def jobs_run(once: bool, interval: float) -> None:
    """Run the jobs (safe to run on several hosts at once)."""
    import time

    from flask import current_app

    from portal import jobs

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    while True:
        click.echo(f"jobs: {jobs.run_all(app)}")
        if once:
            return
        time.sleep(interval)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True)
@with_appcontext
def serve_command(host: str, port: int) -> None:
    """Development server with the in-process jobs (``make run`` uses it)."""
    from flask import current_app
    from werkzeug.serving import run_simple

    from payments.sandbox.sender import NotifySender
    from portal import jobs, providers

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    background: list[jobs.InProcessJobs | NotifySender] = []
    sender = providers.sandbox_sender(app)
    if sender is not None:
        background.append(sender)
    if app.config["JOBS_INPROCESS_SECONDS"] > 0:
        background.append(jobs.InProcessJobs(app, app.config["JOBS_INPROCESS_SECONDS"]))
    for worker in background:
        worker.start()
    try:
        # Flask's app.run() refuses to run inside a `flask` CLI command; run_simple is
        # what it would call.
        run_simple(host, port, app, threaded=True, use_reloader=False)
    finally:
        for worker in background:
            worker.stop()


@click.group("kiosks")
def kiosks_group() -> None:
    """Kiosks: OAuth2 clients of the kiosk API."""


@kiosks_group.command("add")
@click.argument("name")
@click.option("--location", default="", help="where residents find it")
@click.option("--hours", default="", help="opening hours, e.g. 07:00–22:00")
@click.option("--branch", "branch_code", default=None, help="branch code")
@with_appcontext
def kiosks_add(name: str, location: str, hours: str, branch_code: str | None) -> None:
    """Register a kiosk and print its client credentials (shown this once only)."""
    from sqlalchemy import select

    from models.org import Branch
    from models.staff import Kiosk, audit
    from portal.kiosk_auth import new_credentials

    session = db.session()
    branch_id = None
    if branch_code is not None:
        branch = session.scalar(select(Branch).where(Branch.code == branch_code))
        if branch is None:
            raise click.BadParameter(f"no branch {branch_code!r}", param_hint="--branch")
        branch_id = branch.id
    client_id, secret, secret_hash = new_credentials()
    session.add(
        Kiosk(
            name=name,
            location=location,
            opening_hours=hours,
            branch_id=branch_id,
            client_id=client_id,
            client_secret_hash=secret_hash,
        )
    )
    session.add(audit("cli", "kiosk.add", client_id, name=name))
    session.commit()
    click.echo(
        f"client_id:     {client_id}\nclient_secret: {secret}\n"
        "Store the secret in the kiosk's configuration now: it is not kept anywhere."
    )


@kiosks_group.command("disable")
@click.argument("client_id")
@with_appcontext
def kiosks_disable(client_id: str) -> None:
    """Disable a kiosk at once: its tokens stop working on the next request."""
    from sqlalchemy import select

    from models.staff import Kiosk, audit

    session = db.session()
    kiosk = session.scalar(select(Kiosk).where(Kiosk.client_id == client_id))
    if kiosk is None:
        raise click.ClickException(f"no kiosk {client_id!r}")
    kiosk.enabled = False
    session.add(audit("cli", "kiosk.disable", client_id))
    session.commit()
    click.echo(f"kiosk {client_id} disabled")


@kiosks_group.command("list")
@with_appcontext
def kiosks_list() -> None:
    """List kiosks."""
    from sqlalchemy import select

    from models.staff import Kiosk

    for kiosk in db.session().scalars(select(Kiosk).order_by(Kiosk.id)):
        state = "enabled" if kiosk.enabled else "DISABLED"
        click.echo(f"{kiosk.client_id}\t{state}\t{kiosk.name}\t{kiosk.location}")
