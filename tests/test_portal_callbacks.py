"""The notify endpoints with a registered fake provider: verify, store, apply, answer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from models import ledger
from models.base import utcnow
from models.ordering import create_order
from models.orders import Credit, Order, PaymentConflict, PaymentEvent
from portal import create_app
from portal import db as portal_db
from tests.factories import gen_account, gen_tariff
from tests.fake_provider import FakeProvider, sign


@pytest.fixture
def provider(app: Flask) -> FakeProvider:
    fake = FakeProvider("alipay")
    app.extensions["ranqi_providers"] = {"alipay": fake}
    return fake


def _order(db: Session) -> Order:
    account = gen_account(db)
    tariff = gen_tariff(db, account.branch)
    return create_order(
        db,
        meter=account.meters[0],
        tariff_id=tariff.id,
        volume=10000,
        amount=26100,
        quote={},
        channel="alipay",
        now=utcnow(),
        ttl=dt.timedelta(minutes=15),
    )


def _body(order: Order, **overrides: Any) -> bytes:
    payload: dict[str, Any] = {
        "order_no": order.order_no,
        "trade_no": "T-9",
        "status": "paid",
        "amount": order.amount,
    }
    payload.update(overrides)
    return sign(payload)


def _count(db: Session, model: type) -> int:
    return db.scalar(select(func.count()).select_from(model)) or 0


def test_paid_once_and_duplicates_answered_success(
    client: FlaskClient, db: Session, provider: FakeProvider
) -> None:
    order = _order(db)
    for _ in range(3):
        response = client.post("/payments/alipay/notify", data=_body(order))
        assert (response.status_code, response.data) == (200, b"success")
    db.expire_all()
    assert db.get(Order, order.id).state == "paid"  # type: ignore[union-attr]
    assert _count(db, Credit) == 1
    outcomes = db.scalars(select(PaymentEvent.outcome).order_by(PaymentEvent.id)).all()
    assert outcomes == ["paid", "duplicate", "duplicate"]
    assert ledger.check(db) == []


def test_forged_notify_is_stored_and_changes_nothing(
    client: FlaskClient, db: Session, provider: FakeProvider
) -> None:
    order = _order(db)
    forged = _body(order).replace(b'"amount": 26100', b'"amount": 1')
    response = client.post("/payments/alipay/notify", data=forged)
    assert (response.status_code, response.data) == (200, b"fail")
    events = db.scalars(select(PaymentEvent)).all()
    assert [(e.verified, e.outcome, e.detail) for e in events] == [
        (False, "rejected", "bad signature")
    ]
    assert events[0].raw_body == forged
    db.expire_all()
    assert db.get(Order, order.id).state == "created"  # type: ignore[union-attr]
    assert _count(db, Credit) == 0


def test_amount_mismatch_is_a_conflict_and_acknowledged(
    client: FlaskClient, db: Session, provider: FakeProvider
) -> None:
    order = _order(db)
    response = client.post("/payments/alipay/notify", data=_body(order, amount=100))
    # we hold the money: acknowledged so the provider stops, and staff see the conflict
    assert response.data == b"success"
    conflict = db.scalar(select(PaymentConflict))
    assert conflict is not None and conflict.reason == "amount_mismatch"
    assert conflict.amount == 100
    assert _count(db, Credit) == 0


def test_unknown_provider_path_is_404(client: FlaskClient, provider: FakeProvider) -> None:
    assert client.post("/payments/paypal/notify", data=b"{}").status_code == 404


@pytest.fixture
def committing_app(fresh_engine: Engine) -> Iterator[Flask]:
    app = create_app({"DATABASE_URL": fresh_engine.url.render_as_string(hide_password=False)})
    app.extensions["ranqi_providers"] = {"alipay": FakeProvider("alipay")}
    yield app
    portal_db.database(app).engine.dispose()


def test_database_failure_mid_request_asks_for_a_retry(committing_app: Flask) -> None:
    engine = portal_db.database(committing_app).engine
    with Session(engine) as s:
        order = _order(s)
        s.commit()
        order_id, body = order.id, _body(order)

    def die_on_credit(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO credit"):
            raise OperationalError(statement, {}, Exception("server closed the connection"))

    event.listen(engine, "before_cursor_execute", die_on_credit)
    client = committing_app.test_client()
    response = client.post("/payments/alipay/notify", data=body)
    assert response.data == b"fail"  # the provider will retry
    with Session(engine) as s:  # nothing half-written: no event, no state change
        assert s.get(Order, order_id).state == "created"  # type: ignore[union-attr]
        assert _count(s, PaymentEvent) == 0 and _count(s, Credit) == 0

    event.remove(engine, "before_cursor_execute", die_on_credit)
    response = client.post("/payments/alipay/notify", data=body)  # the retry
    assert response.data == b"success"
    with Session(engine) as s:
        assert s.get(Order, order_id).state == "paid"  # type: ignore[union-attr]
        assert _count(s, Credit) == 1
        assert ledger.check(s) == []


def test_an_adapter_crash_is_stored_as_rejected(
    client: FlaskClient, db: Session, provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in an adapter's parser must not lose the raw notify nor answer with a 500."""
    order = _order(db)

    def crash(request: object, *, now: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(provider, "parse_notify", crash)
    response = client.post("/payments/alipay/notify", data=_body(order))
    assert (response.status_code, response.data) == (200, b"fail")
    (event,) = db.scalars(select(PaymentEvent)).all()
    assert (event.verified, event.outcome) == (False, "rejected")
    assert event.detail.startswith("adapter error: RecursionError")
    assert _count(db, Credit) == 0
