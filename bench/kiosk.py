"""The kiosk's figures: NFC traffic per tap, server time per sync/confirm, taps per second.

1. NFC: one card on the virtual field through nfcpy's udp driver (no server): frames
   and bytes per tap for a read-only tap, the first load after issue, and a later load
   written as changed pages only (the kiosk's way) against a full 126-page rewrite;
   median wall time of each over ``--repeat`` taps.
2. Server: ``--cards`` cards (default 1 000 000: accounts, meters, cards bulk-loaded
   with SQL) on PostgreSQL, gunicorn (sync workers) serving ``wsgi:app`` in
   production mode with card keys from files; one kiosk (kiosk.client.KioskClient over
   HTTP) taps ``--samples`` random cards one after another: sync (write issued),
   confirm, the meter applies the load, sync (report, credits applied). p50 / p99 of
   each call's round trip on loopback.
3. Throughput: ``--concurrency`` kiosks (threads, each its own client and credentials)
   tap ``--taps`` other cards (sync + confirm each): taps per second; then every
   credit of those cards must be ``loaded`` exactly once and the ledger must check.

    RANQI_PG_PORT=55481 scripts/with-postgres sh -c '.venv/bin/python bench/kiosk.py'
    .venv/bin/python bench/kiosk.py --nfc-only
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cardfmt  # noqa: E402
from bench.common import free_port, percentile, start_gunicorn  # noqa: E402
from kiosk.cardio import (  # noqa: E402
    authenticate,
    connect_tag,
    open_reader,
    provision_card,
    read_image,
    write_image,
    write_pages,
)
from kiosk.client import KioskClient  # noqa: E402
from kiosk.meter_sim import MeterSimulator  # noqa: E402
from kiosk.virtual_card import VirtualField, VirtualNtag215, uid_for  # noqa: E402
from models import demo, ledger, migrate  # noqa: E402
from models.accounts import Meter  # noqa: E402
from models.base import utcnow  # noqa: E402
from models.cardwrites import CardKeys  # noqa: E402
from models.credits import record_payment  # noqa: E402
from models.ordering import create_order  # noqa: E402
from models.orders import Credit  # noqa: E402
from models.staff import Kiosk  # noqa: E402
from models.tariffs import Tariff  # noqa: E402
from portal.card_keys import load_card_keys  # noqa: E402
from portal.db import make_engine  # noqa: E402
from portal.kiosk_auth import new_credentials  # noqa: E402

VOLUME = 10000  # 100 m³ per purchase


def ms(values: list[float]) -> str:
    p50, p99 = statistics.median(values) * 1000, percentile(values, 99) * 1000
    return f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"


# -- 1. NFC -------------------------------------------------------------------------------------


def make_key_files(directory: Path) -> dict[str, str]:
    """Card keys in files, as production configures them; returns the RANQI_* variables."""
    directory.mkdir(parents=True, exist_ok=True)
    signing = directory / "signing-1.pem"
    signing.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "meter.hex").write_text(secrets.token_hex(32))
    (directory / "tag.hex").write_text(secrets.token_hex(32))
    return {
        "RANQI_CARD_SIGNING_KEY_FILES": f"1={signing}",
        "RANQI_CARD_METER_MASTER_KEY_FILE": str(directory / "meter.hex"),
        "RANQI_CARD_TAG_MASTER_KEY_FILE": str(directory / "tag.hex"),
    }


def load_keys(env: dict[str, str]) -> CardKeys:
    return load_card_keys(
        {
            "RANQI_ENV": "production",
            "CARD_SIGNING_KEY_FILES": env["RANQI_CARD_SIGNING_KEY_FILES"],
            "CARD_METER_MASTER_KEY_FILE": env["RANQI_CARD_METER_MASTER_KEY_FILE"],
            "CARD_TAG_MASTER_KEY_FILE": env["RANQI_CARD_TAG_MASTER_KEY_FILE"],
        }
    )


def issue_image(keys: CardKeys, card_no: str, meter_no: str) -> bytes:
    header = cardfmt.Header(card_no=card_no, meter_no=meter_no, key_version=1)
    return cardfmt.encode(
        cardfmt.issue_card(header, issued_at=utcnow(), signing_key=keys.signing_key, key_version=1)
    )


def next_load(keys: CardKeys, raw: bytes, meter_no: str) -> bytes:
    image = cardfmt.decode(raw, public_keys=keys.public_keys, meter_key=keys.meter_key(meter_no))
    target = cardfmt.next_purchase(
        image,
        add_volume=VOLUME,
        issued_at=utcnow(),
        signing_key=keys.signing_key,
        key_version=keys.signing_version,
    )
    return cardfmt.encode(target)


def nfc_figures(keys: CardKeys, repeat: int) -> None:
    """Frames and bytes per tap over nfcpy's udp driver, changed pages against a full rewrite."""
    card_no, meter_no = "K0000001", "B20000001"
    password = keys.tag_password(card_no, 1)
    card = VirtualNtag215(uid_for(1))
    meter = MeterSimulator.new(
        meter_no,
        master_key=keys.meter_master_key,
        public_keys=keys.public_keys,
        capacity=10**7,
    )
    rows: list[tuple[str, int, int, int, int, float]] = []
    with VirtualField(card) as field:
        clf = open_reader(field.port)
        try:
            issued = issue_image(keys, card_no, meter_no)
            provision_card(connect_tag(clf), issued, password)

            def measure(name: str, tap: Callable[[], None], restore: bytes | None) -> None:
                times, counted = [], None
                for _ in range(repeat):
                    if restore is not None:
                        card.memory[16:520] = restore
                    field.stats.reset()
                    started = time.perf_counter()
                    tap()
                    times.append(time.perf_counter() - started)
                    stats = field.stats
                    counted = (
                        stats.commands,
                        stats.by_command["WRITE"],
                        stats.bytes_in,
                        stats.bytes_out,
                    )
                assert counted is not None
                rows.append((name, *counted, statistics.median(times)))

            def read_only() -> None:
                read_image(connect_tag(clf))

            first_target = next_load(keys, issued, meter_no)

            def first_load() -> None:
                tag = connect_tag(clf)
                write_image(tag, read_image(tag), first_target, password=password)

            measure("read only", read_only, None)
            measure("first load after issue, changed pages", first_load, issued)
            card.memory[16:520] = first_target
            after_meter, _ = meter.insert(first_target)
            card.memory[16:520] = after_meter
            later_target = next_load(keys, after_meter, meter_no)

            def later_load() -> None:
                tag = connect_tag(clf)
                write_image(tag, read_image(tag), later_target, password=password)

            def full_rewrite() -> None:
                tag = connect_tag(clf)
                read_image(tag)
                authenticate(tag, password)
                pages = [
                    (cardfmt.FIRST_PAGE + i, later_target[i * 4 : i * 4 + 4])
                    for i in range(cardfmt.IMAGE_SIZE // 4)
                ]
                write_pages(tag, pages)
                assert read_image(tag) == later_target

            measure("later load, changed pages", later_load, after_meter)
            measure("later load, full rewrite", full_rewrite, after_meter)
        finally:
            clf.close()
    print(f"# NFC per tap (nfcpy udp driver, virtual NTAG215 on loopback; median of {repeat})")
    print(f"{'tap':<40} {'frames':>6} {'WRITEs':>6} {'B to card':>9} {'B from card':>11} {'ms':>6}")
    for name, frames, writes, bytes_in, bytes_out, seconds in rows:
        print(
            f"{name:<40} {frames:>6} {writes:>6} {bytes_in:>9} {bytes_out:>11} "
            f"{seconds * 1000:>6.1f}"
        )
    print(flush=True)


# -- 2 and 3. server ----------------------------------------------------------------------------


def card_numbers(n: int) -> tuple[str, str, str]:
    """(card_no, meter_no, tag_uid) of bulk card ``n``, as load_cards writes them."""
    return f"K{n:08d}", f"B{20000000 + n}", f"04{n:012x}"


def load_cards(dsn: str, count: int) -> float:
    """``count`` accounts, each with one meter and one card, straight into the tables."""
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        branch_id, category_id = conn.execute(
            "SELECT branch_id, category_id FROM account WHERE account_no = '10000001'"
        ).fetchone()
        conn.execute(
            """
            INSERT INTO account (account_no, holder_name, phone, address, branch_id, category_id,
                                 household_size, subsidised, created_at)
            SELECT (20000000 + n)::text, '测试户' || n, '139' || lpad(n::text, 8, '0'),
                   '示范市测试路' || n || '号', %s, %s, 3, false, now()
            FROM generate_series(1, %s) AS n
            """,
            (branch_id, category_id, count),
        )
        conn.execute(
            """
            INSERT INTO meter (meter_no, account_id, kind, capacity, status, applied_count,
                               opening_cycle_volume)
            SELECT 'B' || account_no, id, 'ic_card', 9999999, 'active', 0, 0
            FROM account WHERE account_no::bigint > 20000000
            """
        )
        conn.execute(
            """
            INSERT INTO card (card_no, meter_id, tag_uid, tag_type, purchase_count,
                              replacement_count, pending_volume, state, issued_at)
            SELECT 'K' || lpad((substr(meter_no, 2)::bigint - 20000000)::text, 8, '0'), id,
                   '04' || lpad(to_hex(substr(meter_no, 2)::bigint - 20000000), 12, '0'),
                   'ntag215', 0, 0, 0, 'active', now()
            FROM meter WHERE meter_no LIKE 'B%%'
            """
        )
        conn.execute("ANALYZE")
    return time.perf_counter() - started


def pay(engine: Any, numbers: list[int]) -> None:
    """One paid 100 m³ credit for each card's meter (orders, payment, ledger: the real code)."""
    with Session(engine) as s:
        tariff = s.scalar(select(Tariff).where(Tariff.code == "DEMO-RES-2026"))
        assert tariff is not None
        now = utcnow()
        for n in numbers:
            meter = s.scalar(select(Meter).where(Meter.meter_no == card_numbers(n)[1]))
            assert meter is not None
            order = create_order(
                s,
                meter=meter,
                tariff_id=tariff.id,
                volume=VOLUME,
                amount=26100,
                quote={"parts": []},
                channel="alipay",
                now=now,
                ttl=dt.timedelta(hours=1),
            )
            record_payment(
                s, order, amount=26100, provider_trade_no=secrets.token_hex(8), paid_at=now
            )
        s.commit()


def register_kiosks(engine: Any, count: int) -> list[tuple[str, str]]:
    credentials = []
    with Session(engine) as s:
        for i in range(count):
            client_id, secret, secret_hash = new_credentials()
            s.add(Kiosk(name=f"bench {i}", client_id=client_id, client_secret_hash=secret_hash))
            credentials.append((client_id, secret))
        s.commit()
    return credentials


def apply_plan(raw: bytes, target: bytes) -> bytes:
    """What the card holds after the kiosk wrote the changed pages (the target)."""
    memory = bytearray(raw)
    for page, data in cardfmt.plan_write(raw, target):
        offset = (page - cardfmt.FIRST_PAGE) * cardfmt.PAGE_SIZE
        memory[offset : offset + 4] = data
    return bytes(memory)


def latency(client: KioskClient, keys: CardKeys, numbers: list[int], warmup: int) -> None:
    syncs, confirms, reports = [], [], []
    for i, n in enumerate(numbers):
        card_no, meter_no, uid = card_numbers(n)
        raw = issue_image(keys, card_no, meter_no)
        t0 = time.perf_counter()
        answer = client.sync_card(bytes.fromhex(uid), raw)
        t1 = time.perf_counter()
        assert answer.order is not None and answer.loading == VOLUME, answer
        on_card = apply_plan(raw, answer.order.target)
        t2 = time.perf_counter()
        client.confirm(answer.order.write_id, on_card)
        t3 = time.perf_counter()
        meter = MeterSimulator.new(
            meter_no,
            master_key=keys.meter_master_key,
            public_keys=keys.public_keys,
            capacity=10**7,
        )
        after, _ = meter.insert(on_card)
        t4 = time.perf_counter()
        report = client.sync_card(bytes.fromhex(uid), after)
        t5 = time.perf_counter()
        assert report.order is None and report.applied_volume == VOLUME, report
        if i >= warmup:
            syncs.append(t1 - t0)
            confirms.append(t3 - t2)
            reports.append(t5 - t4)
    print(f"sync (write issued)     n={len(syncs):>5}  {ms(syncs)}")
    print(f"confirm                 n={len(confirms):>5}  {ms(confirms)}")
    print(f"sync (report, applied)  n={len(reports):>5}  {ms(reports)}", flush=True)


def throughput(
    url: str, keys: CardKeys, credentials: list[tuple[str, str]], numbers: list[int]
) -> tuple[float, list[float], int]:
    """Kiosks in threads, each tapping its share of the cards (sync + confirm)."""
    shares = [numbers[i :: len(credentials)] for i in range(len(credentials))]
    images = {n: issue_image(keys, *card_numbers(n)[:2]) for n in numbers}
    barrier = threading.Barrier(len(credentials) + 1)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def kiosk(client_id: str, secret: str, share: list[int]) -> None:
        client = KioskClient(url, client_id, secret, timeout=60)
        client.token()
        barrier.wait()
        for n in share:
            uid = card_numbers(n)[2]
            started = time.perf_counter()
            try:
                answer = client.sync_card(bytes.fromhex(uid), images[n])
                assert answer.order is not None
                client.confirm(answer.order.write_id, answer.order.target)
            except Exception as error:
                with lock:
                    failures.append(f"{n}: {error!r}")
                continue
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [
        threading.Thread(target=kiosk, args=(cid, secret, share))
        for (cid, secret), share in zip(credentials, shares, strict=True)
    ]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        print(f"{len(failures)} failed taps, e.g. {failures[:3]}")
    return elapsed, latencies, len(failures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL", ""))
    parser.add_argument("--cards", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=1000, help="cards timed one by one")
    parser.add_argument("--taps", type=int, default=3000, help="cards tapped concurrently")
    parser.add_argument("--concurrency", type=int, default=16, help="kiosks at once")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers")
    parser.add_argument("--repeat", type=int, default=20, help="NFC taps per figure")
    parser.add_argument("--nfc-only", action="store_true")
    args = parser.parse_args()

    key_env = make_key_files(Path(tempfile.mkdtemp()) / "card-keys")
    keys = load_keys(key_env)
    nfc_figures(keys, args.repeat)
    if args.nfc_only:
        return
    url = args.database_url
    if not url.startswith("postgresql"):
        raise SystemExit("the server part needs PostgreSQL: --database-url or TEST_DATABASE_URL")
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    migrate.upgrade(engine)
    with Session(engine) as s:
        demo.load(s)
        s.commit()
    load_seconds = load_cards(dsn, args.cards)
    print(
        f"# server: {args.cards:,} cards loaded in {load_seconds:.1f} s; PostgreSQL, gunicorn "
        f"{args.workers} sync workers, {os.cpu_count()} cores, client and server on one host"
    )
    chosen = random.Random(7).sample(range(1, args.cards + 1), args.samples + args.taps)
    warmup = min(50, args.samples // 10)
    timed, tapped = chosen[: args.samples], chosen[args.samples :]
    started = time.perf_counter()
    pay(engine, chosen)
    print(f"{len(chosen)} paid credits made in {time.perf_counter() - started:.1f} s")
    credentials = register_kiosks(engine, args.concurrency + 1)
    port = free_port()
    server = start_gunicorn(url, port, args.workers, key_env)
    base = f"http://127.0.0.1:{port}"
    try:
        client = KioskClient(base, *credentials[0], timeout=60)
        print(f"one kiosk, cards one after another (first {warmup} not counted):")
        latency(client, keys, timed, warmup)
        elapsed, latencies, failed = throughput(base, keys, credentials[1:], tapped)
    finally:
        server.terminate()
        server.wait(timeout=30)
    done = len(latencies)
    print(
        f"{args.concurrency} kiosks at once: {done} taps (sync + confirm) in {elapsed:.1f} s = "
        f"{done / elapsed:.0f} taps/s; per tap {ms(latencies)}; {failed} failed"
    )
    with Session(engine) as s:
        states = list(
            s.execute(text("SELECT state, count(*) FROM credit GROUP BY state ORDER BY state"))
        )
        problems = ledger.check(s)
        loaded = s.scalar(
            select(text("count(*)")).select_from(Credit).where(Credit.state == "loaded")
        )
    print(f"credits by state: {[tuple(row) for row in states]}; ledger problems: {len(problems)}")
    assert loaded == done and not problems and not failed
    engine.dispose()


if __name__ == "__main__":
    main()
