"""Kiosks authenticate with OAuth2 client credentials (authlib): hashed, short-lived."""

from __future__ import annotations

import base64
import datetime as dt
import re

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.staff import Kiosk, KioskToken
from portal.kiosk_auth import hash_secret


def _basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def _add_kiosk(app: Flask) -> tuple[str, str]:
    result = app.test_cli_runner().invoke(
        args=["kiosks", "add", "测试自助机", "--location", "幸福路1号"]
    )
    assert result.exit_code == 0, result.output
    client_id = re.search(r"client_id:\s+(\S+)", result.output)
    secret = re.search(r"client_secret:\s+(\S+)", result.output)
    assert client_id and secret
    return client_id.group(1), secret.group(1)


def _token(client: FlaskClient, client_id: str, secret: str) -> str:
    response = client.post(
        "/kiosk/api/v1/token",
        data={"grant_type": "client_credentials"},
        headers=_basic(client_id, secret),
    )
    assert response.status_code == 200, response.json
    body = response.json
    assert body is not None and body["token_type"].lower() == "bearer"
    assert 0 < body["expires_in"] <= 300
    return str(body["access_token"])


def test_token_and_call(app: Flask, client: FlaskClient, db: Session) -> None:
    client_id, secret = _add_kiosk(app)
    kiosk = db.scalar(select(Kiosk).where(Kiosk.client_id == client_id))
    assert kiosk is not None and kiosk.client_secret_hash == hash_secret(secret)
    assert secret not in kiosk.client_secret_hash
    token = _token(client, client_id, secret)
    stored = db.scalar(select(KioskToken))
    assert stored is not None and stored.token_hash == hash_secret(token)
    response = client.get("/kiosk/api/v1/kiosk", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json == {
        "client_id": client_id,
        "name": "测试自助机",
        "location": "幸福路1号",
        "opening_hours": "",
    }


def test_wrong_secret_and_unknown_client(app: Flask, client: FlaskClient) -> None:
    client_id, secret = _add_kiosk(app)
    for headers in (_basic(client_id, secret + "x"), _basic("kiosk-nobody", secret)):
        response = client.post(
            "/kiosk/api/v1/token", data={"grant_type": "client_credentials"}, headers=headers
        )
        assert response.status_code == 401
        assert response.json is not None and response.json["error"] == "invalid_client"


def test_no_or_bad_token(client: FlaskClient) -> None:
    assert client.get("/kiosk/api/v1/kiosk").status_code == 401
    response = client.get("/kiosk/api/v1/kiosk", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401


def test_disabling_a_kiosk_stops_it_at_once(app: Flask, client: FlaskClient, db: Session) -> None:
    client_id, secret = _add_kiosk(app)
    token = _token(client, client_id, secret)
    result = app.test_cli_runner().invoke(args=["kiosks", "disable", client_id])
    assert result.exit_code == 0
    response = client.get("/kiosk/api/v1/kiosk", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    response = client.post(
        "/kiosk/api/v1/token",
        data={"grant_type": "client_credentials"},
        headers=_basic(client_id, secret),
    )
    assert response.status_code == 401


def test_expired_token_is_refused(app: Flask, client: FlaskClient, db: Session) -> None:
    client_id, secret = _add_kiosk(app)
    token = _token(client, client_id, secret)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    db.execute(update(KioskToken).values(expires_at=past))
    response = client.get("/kiosk/api/v1/kiosk", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
