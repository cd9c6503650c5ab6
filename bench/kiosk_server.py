"""Benchmark the kiosk API's /sync and /confirm: server time per call with many cards.

Makes a fresh database through the migrations with N accounts (one meter and one
card each) and one paid credit per meter, then taps every card the way a kiosk does,
through the Flask app (auth, JSON, view, domain, commit): sync (a write is issued),
write the plan onto the image, confirm; then the meter applies the load and a second
sync carries its report back (credits applied). Prints p50 / p99 / max per call.

    .venv/bin/python -m bench.kiosk_server                     # 3000 cards, SQLite file
    .venv/bin/python -m bench.kiosk_server --cards 500 --database-url postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session

import cardfmt
from models import ledger, migrate
from models.base import utcnow
from models.credits import record_payment
from models.orders import Credit, Order
from models.staff import Kiosk, KioskToken
from portal import create_app
from portal.card_keys import card_keys
from portal.db import make_engine
from portal.kiosk_auth import hash_secret
from tests.factories import gen_account, gen_branch, gen_tariff


def _percentiles(name: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"{name:<22} n={len(ms):>5}  p50 {statistics.median(ms):6.2f} ms  "
        f"p99 {p99:6.2f} ms  max {ms[-1]:6.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=3000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ranqi-bench-kiosk-"))
    url = args.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    migrate.upgrade(engine)
    app = create_app({"DATABASE_URL": url, "INSTANCE_PATH": workdir})
    keys = card_keys(app)

    started = time.perf_counter()
    cards: list[tuple[str, str, str, str]] = []  # card_no, meter_no, tag_uid, image b64
    with Session(engine) as s:
        branch = gen_branch(s)
        tariff = gen_tariff(s, branch)
        kiosk = Kiosk(name="bench", client_id="kiosk-bench")
        s.add(kiosk)
        s.flush()
        s.add(
            KioskToken(
                kiosk_id=kiosk.id,
                token_hash=hash_secret("bench-token"),
                scope="kiosk",
                expires_at=utcnow() + dt.timedelta(days=1),
            )
        )
        for i in range(args.cards):
            meter = gen_account(s, branch=branch).meters[0]
            card = meter.cards[0]
            order = Order(
                order_no=f"B{i:010d}",
                account_id=meter.account_id,
                meter_id=meter.id,
                tariff_id=tariff.id,
                channel="alipay",
                amount=26100,
                volume=10000,
                quote={"parts": []},
            )
            s.add(order)
            s.flush()
            record_payment(s, order, amount=26100, provider_trade_no=f"T{i}", paid_at=utcnow())
            header = cardfmt.Header(card.card_no, meter.meter_no, key_version=1)
            image = cardfmt.issue_card(
                header, issued_at=utcnow(), signing_key=keys.signing_key, key_version=1
            )
            cards.append(
                (
                    card.card_no,
                    meter.meter_no,
                    card.tag_uid or "",
                    base64.b64encode(cardfmt.encode(image)).decode(),
                )
            )
        s.commit()
    print(f"{args.cards} cards with a paid credit each in {time.perf_counter() - started:.1f} s")
    print(f"database: {engine.dialect.name}")

    client = app.test_client()
    auth = {"Authorization": "Bearer bench-token"}
    sync_write: list[float] = []
    confirm: list[float] = []
    sync_report: list[float] = []
    for _card_no, meter_no, uid, image in cards:
        t0 = time.perf_counter()
        answer = client.post(
            "/kiosk/api/v1/sync", json={"card_uid": uid, "image": image}, headers=auth
        )
        t1 = time.perf_counter()
        body = answer.json
        assert answer.status_code == 200 and body is not None and body["status"] == "write", body
        memory = bytearray(base64.b64decode(image))
        for page, data in body["plan"]:
            offset = (page - cardfmt.FIRST_PAGE) * cardfmt.PAGE_SIZE
            memory[offset : offset + 4] = bytes.fromhex(data)
        readback = base64.b64encode(bytes(memory)).decode()
        t2 = time.perf_counter()
        answer = client.post(
            "/kiosk/api/v1/confirm",
            json={"write_id": body["write_id"], "image": readback},
            headers=auth,
        )
        t3 = time.perf_counter()
        assert answer.status_code == 200, answer.json
        sync_write.append(t1 - t0)
        confirm.append(t3 - t2)

        # the meter takes the load and writes its report; the next tap carries it back
        decoded = cardfmt.decode(bytes(memory), public_keys=keys.public_keys)
        report = cardfmt.MeterReport(
            meter_no=meter_no,
            report_seq=1,
            count_applied=1,
            remaining=10000,
            total_used=0,
            total_purchased=10000,
            valve_open=True,
            alarms=cardfmt.Alarm(0),
            reported_at=utcnow().replace(microsecond=0),
        )
        sealed = cardfmt.seal_report(report, keys.meter_key(meter_no))
        after = base64.b64encode(cardfmt.encode(replace(decoded, report=sealed))).decode()
        t4 = time.perf_counter()
        answer = client.post(
            "/kiosk/api/v1/sync", json={"card_uid": uid, "image": after}, headers=auth
        )
        t5 = time.perf_counter()
        assert answer.status_code == 200 and answer.json is not None
        assert answer.json["applied_volume"] == 10000, answer.json
        sync_report.append(t5 - t4)

    _percentiles("sync (write issued)", sync_write)
    _percentiles("confirm", confirm)
    _percentiles("sync (report, applied)", sync_report)
    with Session(engine) as s:
        states = {c.state for c in s.scalars(select(Credit))}
        problems = ledger.check(s)
    print(f"credits: {sorted(states)}; ledger problems: {len(problems)}")
    assert states == {"applied"} and problems == []


if __name__ == "__main__":
    main()
