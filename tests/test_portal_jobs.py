"""Jobs against a committing database: expire and close unpaid orders, query stale ones."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from models import ledger
from models.base import utcnow
from models.ordering import create_order
from models.orders import Credit, Order
from payments.base import TradeQuery, TradeStatus
from portal import create_app, jobs
from portal import db as portal_db
from tests.factories import gen_account, gen_tariff
from tests.fake_provider import FakeProvider


@pytest.fixture
def setup(fresh_engine: Engine) -> Iterator[tuple[Flask, FakeProvider]]:
    app = create_app({"DATABASE_URL": fresh_engine.url.render_as_string(hide_password=False)})
    fake = FakeProvider("alipay")
    app.extensions["ranqi_providers"] = {"alipay": fake}
    yield app, fake
    portal_db.database(app).engine.dispose()


def _orders(app: Flask, count: int, *, age: dt.timedelta) -> list[str]:
    with Session(portal_db.database(app).engine) as s:
        account = gen_account(s)
        tariff = gen_tariff(s, account.branch)
        created = utcnow() - age
        numbers = []
        for _ in range(count):
            order = create_order(
                s,
                meter=account.meters[0],
                tariff_id=tariff.id,
                volume=10000,
                amount=26100,
                quote={},
                channel="alipay",
                now=created,
                ttl=dt.timedelta(minutes=15),
            )
            numbers.append(order.order_no)
        s.commit()
        return numbers


def _states(app: Flask) -> dict[str, str]:
    with Session(portal_db.database(app).engine) as s:
        return {no: state for no, state in s.execute(select(Order.order_no, Order.state))}


def test_expired_orders_are_closed_at_the_provider(setup: tuple[Flask, FakeProvider]) -> None:
    app, fake = setup
    old = _orders(app, 2, age=dt.timedelta(minutes=20))
    fresh = _orders(app, 1, age=dt.timedelta(minutes=1))
    report = jobs.expire_orders(app)
    assert (report.expired, report.paid_on_query, report.failed) == (2, 0, 0)
    assert sorted(fake.closed) == sorted(old)
    states = _states(app)
    assert [states[n] for n in old] == ["closed", "closed"]
    assert states[fresh[0]] == "created"
    assert jobs.expire_orders(app).expired == 0  # nothing left to do
    assert sorted(fake.closed) == sorted(old)


def test_a_trade_paid_at_the_provider_is_applied_not_closed(
    setup: tuple[Flask, FakeProvider],
) -> None:
    app, fake = setup
    (order_no,) = _orders(app, 1, age=dt.timedelta(minutes=20))
    fake.queries[order_no] = TradeQuery(
        order_no, TradeStatus.paid, amount=26100, provider_trade_no="T-Q", paid_at=utcnow()
    )
    report = jobs.expire_orders(app)
    assert (report.expired, report.paid_on_query) == (0, 1)
    assert fake.closed == []
    assert _states(app)[order_no] == "paid"
    with Session(portal_db.database(app).engine) as s:
        assert s.scalar(select(func.count()).select_from(Credit)) == 1
        assert ledger.check(s) == []


def test_stale_orders_are_queried(setup: tuple[Flask, FakeProvider]) -> None:
    app, fake = setup
    stale, recent = _orders(app, 2, age=dt.timedelta(minutes=5))
    fake.queries[stale] = TradeQuery(
        stale, TradeStatus.paid, amount=26100, provider_trade_no="T-S", paid_at=utcnow()
    )
    report = jobs.query_stale(app, older_than=dt.timedelta(minutes=2))
    assert report.paid_on_query == 1
    assert _states(app) == {stale: "paid", recent: "created"}


def test_two_hosts_expire_each_order_once(setup: tuple[Flask, FakeProvider]) -> None:
    app, fake = setup
    numbers = _orders(app, 12, age=dt.timedelta(minutes=20))
    reports: list[jobs.JobReport] = []
    threads = [
        threading.Thread(target=lambda: reports.append(jobs.expire_orders(app))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in range(3):  # SQLite refuses a racing writer; the next round picks it up
        reports.append(jobs.expire_orders(app))
    assert set(_states(app).values()) == {"closed"}
    assert sum(r.expired for r in reports) == 12
    if portal_db.database(app).engine.dialect.name == "postgresql":
        assert sorted(fake.closed) == sorted(numbers)  # SKIP LOCKED: no order twice
