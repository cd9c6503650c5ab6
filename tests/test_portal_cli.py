"""The `ranqi` console script on a real database file made by its own migrations."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from models import Account, Card, Meter, Tariff, credits, migrate
from models.base import utcnow
from models.orders import Order
from portal.cli import main


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Environment of an operator on a fresh SQLite file."""
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("RANQI_ENV", "development")
    monkeypatch.setenv("RANQI_INSTANCE_PATH", str(tmp_path / "instance"))
    return url


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_upgrade_demo_and_check(cli_env: str) -> None:
    assert run("db", "upgrade") == (0, "database at 0002\n")
    code, out = run("demo")
    assert code == 0 and "10 accounts" in out
    assert run("demo") == (0, "demo data already present\n")
    assert run("ledger", "check") == (0, "ledger check passed\n")
    with Session(create_engine(cli_env)) as s:
        assert s.scalar(select(func.count()).select_from(Account)) == 10
        assert s.scalar(select(func.count()).select_from(Meter)) == 11  # 10000002 has two
        assert s.scalar(select(func.count()).select_from(Card)) == 11
        assert s.scalar(select(func.count()).select_from(Tariff)) == 2
        first = s.scalar(select(Account).where(Account.account_no == "10000001"))
        assert first is not None and first.meters[0].opening_cycle_volume == 30000


def test_ledger_check_fails_on_corruption(cli_env: str) -> None:
    assert run("db", "upgrade")[0] == 0
    assert run("demo")[0] == 0
    engine = create_engine(cli_env)
    with Session(engine) as s:
        meter = s.scalars(select(Meter)).first()
        tariff = s.scalars(select(Tariff)).first()
        assert meter is not None and tariff is not None
        order = Order(
            order_no="R1",
            account_id=meter.account_id,
            meter_id=meter.id,
            tariff_id=tariff.id,
            channel="alipay",
            amount=26100,
            volume=10000,
            quote={},
            state="paying",
        )
        s.add(order)
        s.flush()
        credits.record_payment(s, order, amount=26100, provider_trade_no="T", paid_at=utcnow())
        s.commit()
    assert run("ledger", "check") == (0, "ledger check passed\n")
    with engine.begin() as conn:  # money appears from nowhere: one unbalanced line
        entry_id = conn.scalar(text("SELECT min(id) FROM ledger_entry"))
        conn.execute(
            text(
                "INSERT INTO ledger_line (entry_id, account, unit, amount, order_id, "
                "channel) VALUES (:e, 'provider_clearing', 'fen', 1, 1, 'alipay')"
            ),
            {"e": entry_id},
        )
    code, out = run("ledger", "check")
    assert code == 1
    assert f"[unbalanced-entry] entry {entry_id} (payment): fen sums to 1" in out
    assert "[order-paid] order R1" in out
    assert "ledger check FAILED" in out


def test_migrations_go_down_and_up(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    migrate.upgrade(engine)
    assert migrate.current(engine) == "0002"
    migrate.downgrade(engine, "base")
    assert migrate.current(engine) is None
    with engine.connect() as conn:
        tables = conn.scalars(text("SELECT name FROM sqlite_master WHERE type='table'")).all()
    assert set(tables) <= {"alembic_version"}
    migrate.upgrade(engine)
    assert migrate.current(engine) == "0002"


def test_production_needs_a_secret_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from portal import create_app
    from portal.config import ConfigError

    monkeypatch.setenv("RANQI_ENV", "production")
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.setenv("RANQI_INSTANCE_PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app()
    monkeypatch.setenv("SECRET_KEY", "x" * 32)
    assert create_app().config["SECRET_KEY"] == "x" * 32
