"""The kiosk API's /sync and /confirm over HTTP: the loop, refusals, one write per card."""

from __future__ import annotations

import base64
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from models import ledger
from models.accounts import Card
from models.cardwrites import CardKeys
from models.orders import CardWrite, Credit
from models.staff import Kiosk
from models.states import CardState, CreditState
from portal import create_app
from portal.card_keys import CardKeyError, card_keys, load_card_keys
from portal.kiosk_api import KIOSK_OPENAPI_PATHS, bp
from portal.kiosk_auth import hash_secret
from tests.factories import gen_account, unique
from tests.test_models_cardwrites import MeterSim, issue_image, paid_credit, write_pages

SYNC, CONFIRM = "/kiosk/api/v1/sync", "/kiosk/api/v1/confirm"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def kiosk_token(client: FlaskClient, session: Session) -> str:
    """A bearer token for a new kiosk, through the real token endpoint."""
    secret = secrets.token_urlsafe(16)
    kiosk = Kiosk(
        name="测试自助机", client_id=unique("kiosk-"), client_secret_hash=hash_secret(secret)
    )
    client_id = kiosk.client_id
    session.add(kiosk)
    # committed, and not touched again: an open read would hold an old SQLite snapshot
    session.commit()
    response = client.post(
        "/kiosk/api/v1/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
    )
    assert response.status_code == 200, response.json
    assert response.json is not None
    return str(response.json["access_token"])


@pytest.fixture
def keys(app: Flask, tmp_path: Path) -> CardKeys:
    app.config["INSTANCE_PATH"] = tmp_path
    return card_keys(app)


@pytest.fixture
def auth(client: FlaskClient, db: Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {kiosk_token(client, db)}"}


@pytest.fixture
def card(db: Session) -> Card:
    return gen_account(db).meters[0].cards[0]


def post(client: FlaskClient, path: str, auth: dict[str, str], body: Any) -> tuple[int, Any]:
    response = client.post(path, json=body, headers=auth)
    return response.status_code, response.json


def test_sync_write_confirm_meter_report(
    client: FlaskClient, db: Session, keys: CardKeys, auth: dict[str, str], card: Card
) -> None:
    credit = paid_credit(db, card.meter, 12345)
    raw = issue_image(card, keys)
    status, body = post(client, SYNC, auth, {"card_uid": card.tag_uid, "image": b64(raw)})
    assert status == 200, body
    assert body["status"] == "write" and body["loading"] == 12345
    assert body["target"] == {"purchase_count": 1, "pending_volume": 12345}
    assert body["account_no"] == card.meter.account.account_no
    assert body["meter_no"] == card.meter.meter_no
    assert bytes.fromhex(body["tag_password"]) == keys.tag_password(card.card_no, 1)
    plan = [(page, bytes.fromhex(data)) for page, data in body["plan"]]
    on_card = write_pages(raw, plan)
    assert on_card == base64.b64decode(body["image"])

    confirm = {"write_id": body["write_id"], "image": b64(on_card)}
    status, confirmed = post(client, CONFIRM, auth, confirm)
    assert status == 200, confirmed
    assert confirmed["status"] == "confirmed" and confirmed["loaded"] == 12345
    assert credit.state == CreditState.loaded
    # a repeated confirm answers the same success and changes nothing
    assert post(client, CONFIRM, auth, confirm) == (200, confirmed)
    assert ledger.check(db) == []

    after_meter = MeterSim(card.meter.meter_no).insert(on_card, keys=keys)
    status, body = post(client, SYNC, auth, {"card_uid": card.tag_uid, "image": b64(after_meter)})
    assert status == 200, body
    assert body["status"] == "up_to_date" and body["write_id"] is None
    assert body["applied_volume"] == 12345
    assert body["card"] == {"purchase_count": 1, "pending_volume": 12345, "pending_applied": True}
    assert body["meter"]["applied_count"] == 1 and body["meter"]["remaining"] == 12345
    db.refresh(credit)
    assert credit.state == CreditState.applied
    assert ledger.check(db) == []


def test_confirm_refusals(
    client: FlaskClient, db: Session, keys: CardKeys, auth: dict[str, str], card: Card
) -> None:
    paid_credit(db, card.meter)
    raw = issue_image(card, keys)
    _, body = post(client, SYNC, auth, {"card_uid": card.tag_uid, "image": b64(raw)})
    status, error = post(client, CONFIRM, auth, {"write_id": body["write_id"], "image": b64(raw)})
    assert (status, error["error"]["code"]) == (409, "readback_mismatch")
    status, error = post(client, CONFIRM, auth, {"write_id": "f" * 32, "image": b64(raw)})
    assert (status, error["error"]["code"]) == (404, "unknown_write")
    status, error = post(client, CONFIRM, auth, {"write_id": None, "image": b64(raw)})
    assert (status, error["error"]["code"]) == (400, "bad_request")
    assert db.scalar(select(CardWrite.state)) == "issued"
    assert db.scalar(select(Credit.state)) == "awaiting_load"


def test_bad_input_changes_nothing(
    client: FlaskClient, db: Session, keys: CardKeys, auth: dict[str, str], card: Card
) -> None:
    paid_credit(db, card.meter)
    raw = issue_image(card, keys)
    forged = bytearray(raw)
    forged[56 + 70] ^= 1  # inside slot A's signature
    uid = card.tag_uid
    cases: list[tuple[Any, int, str]] = [
        ("not an object", 400, "bad_request"),
        ({"image": b64(raw)}, 400, "bad_request"),
        ({"card_uid": "xyz", "image": b64(raw)}, 400, "bad_request"),
        ({"card_uid": uid, "image": "***"}, 400, "bad_image_encoding"),
        ({"card_uid": uid, "image": b64(raw[:-4])}, 422, "card_unreadable"),
        ({"card_uid": uid, "image": b64(bytes(504))}, 422, "card_unreadable"),
        ({"card_uid": uid, "image": b64(bytes(forged))}, 422, "card_unreadable"),
        ({"card_uid": uid, "image": b64(issue_image(card, _other_keys()))}, 422, "card_refused"),
        ({"card_uid": "04" * 7, "image": b64(raw)}, 422, "tag_uid_mismatch"),
        (
            {"card_uid": uid, "image": b64(issue_image(card, keys, card_no="NOBODY"))},
            404,
            "unknown_card",
        ),
    ]
    for body, want_status, want_code in cases:
        status, answer = post(client, SYNC, auth, body)
        assert (status, answer["error"]["code"]) == (want_status, want_code), body
        assert answer["error"]["message"]
    assert client.post(SYNC, data=b"\xff", headers=auth).status_code == 400
    assert db.scalar(select(func.count()).select_from(CardWrite)) == 0


def test_blacklisted_card_is_refused(
    client: FlaskClient, db: Session, keys: CardKeys, auth: dict[str, str], card: Card
) -> None:
    paid_credit(db, card.meter)
    card.transition_to(CardState.blacklisted)
    db.commit()
    status, body = post(
        client, SYNC, auth, {"card_uid": card.tag_uid, "image": b64(issue_image(card, keys))}
    )
    assert (status, body["error"]["code"]) == (403, "card_blacklisted")


def test_no_token_no_sync(client: FlaskClient) -> None:
    assert client.post(SYNC, json={}).status_code == 401
    assert (
        client.post(CONFIRM, json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
    )


def _other_keys() -> CardKeys:
    return CardKeys(
        signing_keys={1: Ed25519PrivateKey.generate()},
        signing_version=1,
        meter_master_key=bytes(32),
        tag_master_key=bytes(32),
    )


@pytest.fixture
def shared_app(fresh_engine: Engine, tmp_path: Path) -> Iterator[Flask]:
    """An app on a database of its own whose requests really commit (threads see each other)."""
    application = create_app(
        {
            "DATABASE_URL": fresh_engine.url.render_as_string(hide_password=False),
            "INSTANCE_PATH": tmp_path,
        }
    )
    yield application
    from portal import db as portal_db

    portal_db.database(application).engine.dispose()


def test_two_kiosks_one_card_one_write(shared_app: Flask, fresh_engine: Engine) -> None:
    """Two kiosks sync the same card at once: one gets the write, the other 409 busy."""
    keys = card_keys(shared_app)
    with Session(fresh_engine) as s:
        card = gen_account(s).meters[0].cards[0]
        paid_credit(s, card.meter)
        s.commit()
        raw, uid = issue_image(card, keys), card.tag_uid
        headers = [
            {"Authorization": f"Bearer {kiosk_token(shared_app.test_client(), s)}"}
            for _ in range(2)
        ]
    barrier = threading.Barrier(2)
    answers: list[tuple[int, Any]] = []

    def tap(auth: dict[str, str]) -> None:
        client = shared_app.test_client()
        barrier.wait()
        answers.append(post(client, SYNC, auth, {"card_uid": uid, "image": b64(raw)}))

    threads = [threading.Thread(target=tap, args=(h,)) for h in headers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 409], answers
    busy = next(body for status, body in answers if status == 409)
    assert busy["error"]["code"] == "card_busy"
    with Session(fresh_engine) as s:
        assert s.scalars(select(CardWrite.state)).all() == ["issued"]


def test_development_keys_are_made_once_and_kept(tmp_path: Path) -> None:
    config = {"RANQI_ENV": "development", "INSTANCE_PATH": tmp_path}
    first, second = load_card_keys(config), load_card_keys(config)
    assert first.meter_master_key == second.meter_master_key
    assert first.tag_master_key == second.tag_master_key
    assert first.public_keys[1].public_bytes_raw() == second.public_keys[1].public_bytes_raw()
    assert (tmp_path / "card-keys" / "signing-1.pem").stat().st_mode & 0o077 == 0


def test_production_needs_configured_keys(tmp_path: Path) -> None:
    with pytest.raises(CardKeyError):
        load_card_keys({"RANQI_ENV": "production", "INSTANCE_PATH": tmp_path})
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    for name, key in (("old.pem", old), ("new.pem", new)):
        (tmp_path / name).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    (tmp_path / "meter.hex").write_text("ab" * 32)
    (tmp_path / "tag.hex").write_text("cd" * 32 + "\n")
    keys = load_card_keys(
        {
            "RANQI_ENV": "production",
            "CARD_SIGNING_KEY_FILES": f"1={tmp_path / 'old.pem'},2={tmp_path / 'new.pem'}",
            "CARD_METER_MASTER_KEY_FILE": str(tmp_path / "meter.hex"),
            "CARD_TAG_MASTER_KEY_FILE": str(tmp_path / "tag.hex"),
        }
    )
    assert keys.signing_version == 2
    assert keys.signing_key.public_key().public_bytes_raw() == new.public_key().public_bytes_raw()
    assert keys.meter_master_key == bytes.fromhex("ab" * 32)
    (tmp_path / "tag.hex").write_text("cd" * 8)
    with pytest.raises(CardKeyError):
        load_card_keys(
            {
                "RANQI_ENV": "production",
                "CARD_SIGNING_KEY_FILES": f"1={tmp_path / 'old.pem'}",
                "CARD_METER_MASTER_KEY_FILE": str(tmp_path / "meter.hex"),
                "CARD_TAG_MASTER_KEY_FILE": str(tmp_path / "tag.hex"),
            }
        )


def test_openapi_fragment_lists_every_kiosk_route(app: Flask) -> None:
    from portal.kiosk_orders import KIOSK_ORDERS_OPENAPI_PATHS

    rules = {
        (re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith(f"{bp.name}.")
        for method in rule.methods or ()
        if method in {"GET", "POST"}
    }
    fragments = KIOSK_OPENAPI_PATHS | KIOSK_ORDERS_OPENAPI_PATHS
    documented = {(path, method) for path, item in fragments.items() for method in item}
    assert rules == documented
