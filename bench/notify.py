"""Notify throughput through HTTP, beside the bare database transaction; look-up latency.

Run: ``make bench-notify`` (a throwaway PostgreSQL cluster through scripts/with-postgres),
or ``TEST_DATABASE_URL=postgresql+psycopg://... .venv/bin/python bench/notify.py``.
The schema of that database is dropped and re-made.

What it does, all in one run so that the figures are comparable on a noisy machine:

1. gunicorn (sync workers) serves ``wsgi:app`` in live payment mode with Alipay keys made
   by the sandbox; signed Alipay notifies (RSA2, verified for real by the adapter) for
   fresh orders are POSTed by 1, 8 and 32 concurrent senders: notifies per second,
   latency p50/p99, and a check that every order became paid exactly once.
2. The same transaction (lock the order, store the event, order → paid, credit, ledger
   entry with four lines) issued bare with psycopg at the same concurrency.
3. 1 000 000 accounts loaded; the residents' look-up page timed over HTTP (p50/p99).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import os
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import psycopg
from sqlalchemy import text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, percentile, start_gunicorn  # noqa: E402
from models import demo, migrate  # noqa: E402
from payments.alipay import (  # noqa: E402
    load_private_key,
    notify_sign_content,
    sign_rsa2,
)
from payments.sandbox import alipay as alipay_sandbox  # noqa: E402
from portal.db import make_engine  # noqa: E402

APP_ID = "2021000000000001"
SELLER_ID = "2088000000000001"
BEIJING = dt.timezone(dt.timedelta(hours=8))


def reset_database(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    migrate.upgrade(engine)
    with Session(engine) as session:
        demo.load(session)
        session.commit()
    engine.dispose()


def make_orders(dsn: str, prefix: str, count: int) -> list[tuple[str, int]]:
    """``count`` unpaid orders of 100 m³ for demo meter M100000051; (order_no, amount)."""
    amount = 26100
    with psycopg.connect(dsn) as conn:
        meter_id, account_id = conn.execute(
            "SELECT id, account_id FROM meter WHERE meter_no = 'M100000051'"
        ).fetchone()
        tariff_id = conn.execute("SELECT id FROM tariff WHERE code = 'DEMO-RES-2026'").fetchone()[0]
        conn.execute(
            """
            INSERT INTO orders (order_no, account_id, meter_id, tariff_id, channel, state, amount,
                                volume, quote, created_at, expires_at)
            SELECT %s || lpad(n::text, 8, '0'), %s, %s, %s, 'alipay', 'paying', %s, 10000,
                   '{}', now(), now() + interval '1 day'
            FROM generate_series(1, %s) AS n
            """,
            (prefix, account_id, meter_id, tariff_id, amount, count),
        )
    return [(f"{prefix}{n:08d}", amount) for n in range(1, count + 1)]


def notify_bodies(keys: alipay_sandbox.SandboxKeys, orders: list[tuple[str, int]]) -> list[bytes]:
    """Signed Alipay trade_status_sync notifies, as the real Alipay would POST them."""
    key = load_private_key(keys.alipay_private_key_path)
    now = dt.datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
    bodies = []
    for order_no, amount in orders:
        total = f"{amount // 100}.{amount % 100:02d}"
        params = {
            "app_id": APP_ID,
            "auth_app_id": APP_ID,
            "seller_id": SELLER_ID,
            "charset": "utf-8",
            "notify_type": "trade_status_sync",
            "notify_id": secrets.token_hex(16),
            "notify_time": now,
            "gmt_create": now,
            "gmt_payment": now,
            "version": "1.0",
            "out_trade_no": order_no,
            "trade_no": "2026" + secrets.token_hex(12),
            "trade_status": "TRADE_SUCCESS",
            "total_amount": total,
            "receipt_amount": total,
            "buyer_pay_amount": total,
            "invoice_amount": total,
            "sign_type": "RSA2",
        }
        params["sign"] = sign_rsa2(key, notify_sign_content(params))
        bodies.append(urllib.parse.urlencode(params).encode())
    return bodies


def post_all(port: int, bodies: list[bytes], concurrency: int) -> tuple[float, list[float], int]:
    """POST every body with ``concurrency`` senders; (seconds, latencies, failures)."""
    chunks = [bodies[i::concurrency] for i in range(concurrency)]
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)

    def sender(chunk: list[bytes]) -> None:
        nonlocal failures
        mine: list[float] = []
        bad = 0
        barrier.wait()
        for body in chunk:
            start = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(
                "POST",
                "/payments/alipay/notify",
                body,
                {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
            )
            answer = conn.getresponse().read()
            conn.close()
            mine.append(time.perf_counter() - start)
            if answer.strip() != b"success":
                bad += 1
        with lock:
            latencies.extend(mine)
            failures += bad

    threads = [threading.Thread(target=sender, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, failures


def bare_transactions(dsn: str, orders: list[tuple[str, int]], concurrency: int) -> float:
    """The notify's database work issued bare with psycopg; seconds for all orders."""
    chunks = [orders[i::concurrency] for i in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)

    def worker(chunk: list[tuple[str, int]]) -> None:
        with psycopg.connect(dsn) as conn:
            barrier.wait()
            for order_no, amount in chunk:
                with conn.transaction():
                    order_id, meter_id, volume = conn.execute(
                        "SELECT id, meter_id, volume FROM orders WHERE order_no = %s FOR UPDATE",
                        (order_no,),
                    ).fetchone()
                    conn.execute(
                        "INSERT INTO payment_event (provider, kind, order_no, raw_body, headers, "
                        "verified, outcome, detail, received_at) VALUES ('alipay', 'notify', %s, "
                        "%s, '{}', true, 'paid', '', now())",
                        (order_no, b"x" * 900),
                    )
                    conn.execute(
                        "UPDATE orders SET state = 'paid', provider_trade_no = 'T', "
                        "paid_at = now() WHERE id = %s",
                        (order_id,),
                    )
                    credit_id = conn.execute(
                        "INSERT INTO credit (order_id, meter_id, volume, value, state, created_at) "
                        "VALUES (%s, %s, %s, %s, 'awaiting_load', now()) RETURNING id",
                        (order_id, meter_id, volume, amount),
                    ).fetchone()[0]
                    entry_id = conn.execute(
                        "INSERT INTO ledger_entry (kind, order_id, memo, created_at) "
                        "VALUES ('payment', %s, '', now()) RETURNING id",
                        (order_id,),
                    ).fetchone()[0]
                    with conn.cursor() as cur:
                        cur.executemany(
                            "INSERT INTO ledger_line (entry_id, account, unit, amount, order_id, "
                            "credit_id, meter_id, channel) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                            [
                                (
                                    entry_id,
                                    "provider_clearing",
                                    "fen",
                                    amount,
                                    order_id,
                                    None,
                                    None,
                                    "alipay",
                                ),
                                (
                                    entry_id,
                                    "gas_liability",
                                    "fen",
                                    -amount,
                                    order_id,
                                    None,
                                    None,
                                    None,
                                ),
                                (
                                    entry_id,
                                    "gas_sold",
                                    "gas",
                                    -volume,
                                    order_id,
                                    credit_id,
                                    meter_id,
                                    None,
                                ),
                                (
                                    entry_id,
                                    "awaiting_load",
                                    "gas",
                                    volume,
                                    order_id,
                                    credit_id,
                                    meter_id,
                                    None,
                                ),
                            ],
                        )

    threads = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def load_accounts(dsn: str, count: int) -> float:
    """``count`` more accounts with one meter each, straight into the tables; seconds."""
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
            SELECT 'B' || account_no, id, 'ic_card', 99999, 'active', 0, 0
            FROM account WHERE account_no::bigint > 20000000
            """
        )
        conn.execute("ANALYZE")
    return time.perf_counter() - started


def time_lookups(port: int, count: int, total_accounts: int) -> list[float]:
    latencies = []
    rng = random.Random(7)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(count):
        account_no = str(20000000 + rng.randint(1, total_accounts))
        start = time.perf_counter()
        conn.request(
            "GET",
            f"/accounts/lookup?account_no={account_no}",
            headers={"HX-Request": "true", "Connection": "keep-alive"},
        )
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - start)
        if response.status != 200:
            raise SystemExit(f"look-up answered {response.status}")
        if response.getheader("Connection", "").lower() == "close" or response.will_close:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    return latencies


def print_notify_table(args: argparse.Namespace, rows: list[tuple[float, ...]]) -> None:
    """The notify figures, printed as soon as they are measured."""
    print(
        f"# notify throughput: {args.notifies} notifies per level, gunicorn {args.workers} sync "
        f"workers, PostgreSQL, Alipay RSA2 verification; {os.cpu_count()} cores",
    )
    print(
        f"{'senders':>8} {'notify/s':>10} {'bare tx/s':>10} {'ratio':>6} "
        f"{'p50 ms':>8} {'p99 ms':>8}"
    )
    for level, rate, bare_rate, ratio, p50, p99 in rows:
        print(
            f"{level:>8.0f} {rate:>10.0f} {bare_rate:>10.0f} {ratio:>6.2f} {p50:>8.1f} {p99:>8.1f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL", ""))
    parser.add_argument("--notifies", type=int, default=3000, help="per concurrency level")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=2000)
    args = parser.parse_args()
    url = args.database_url
    if not url.startswith("postgresql"):
        raise SystemExit("needs PostgreSQL: --database-url or TEST_DATABASE_URL")
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    levels = [int(c) for c in args.concurrency.split(",")]

    reset_database(url)
    keys = alipay_sandbox.ensure_sandbox_keys(Path(tempfile.mkdtemp()) / "alipay")
    port = free_port()
    server = start_gunicorn(
        url,
        port,
        args.workers,
        {
            "RANQI_PAYMENTS": "live",
            "ALIPAY_APP_ID": APP_ID,
            "ALIPAY_SELLER_ID": SELLER_ID,
            "ALIPAY_APP_PRIVATE_KEY_FILE": str(keys.app_private_key_path),
            "ALIPAY_PUBLIC_KEY_FILE": str(keys.alipay_public_key_path),
            "RANQI_INSTANCE_PATH": tempfile.mkdtemp(),
            # the look-up timing is one client asking fast: not what the limit is for
            "RANQI_RATELIMIT_LOOKUP": "1000000 per minute",
        },
    )
    rows = []
    try:
        for level in levels:
            http_orders = make_orders(dsn, f"H{level:02d}", args.notifies)
            bare_orders = make_orders(dsn, f"B{level:02d}", args.notifies)
            bodies = notify_bodies(keys, http_orders)
            seconds, latencies, failures = post_all(port, bodies, level)
            bare_seconds = bare_transactions(dsn, bare_orders, level)
            with psycopg.connect(dsn) as conn:
                paid = conn.execute(
                    "SELECT count(*) FROM orders WHERE order_no LIKE %s AND state = 'paid'",
                    (f"H{level:02d}%",),
                ).fetchone()[0]
                credits = conn.execute(
                    "SELECT count(*) FROM credit JOIN orders ON orders.id = credit.order_id "
                    "WHERE order_no LIKE %s",
                    (f"H{level:02d}%",),
                ).fetchone()[0]
            if failures or paid != args.notifies or credits != args.notifies:
                raise SystemExit(
                    f"concurrency {level}: {failures} failures, {paid} paid, "
                    f"{credits} credits of {args.notifies}"
                )
            rate = args.notifies / seconds
            bare_rate = args.notifies / bare_seconds
            rows.append(
                (
                    level,
                    rate,
                    bare_rate,
                    rate / bare_rate,
                    statistics.median(latencies) * 1000,
                    percentile(latencies, 99) * 1000,
                )
            )

        print_notify_table(args, rows)
        load_seconds = load_accounts(dsn, args.accounts)
        time_lookups(port, 200, args.accounts)  # warm the workers
        lookups = time_lookups(port, args.lookups, args.accounts)
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(
        f"\n# look-up: {args.accounts:,} extra accounts loaded in {load_seconds:.1f} s; "
        f"{args.lookups} look-ups over HTTP (htmx fragment), one client"
    )
    print(
        f"p50 {statistics.median(lookups) * 1000:.1f} ms, "
        f"p99 {percentile(lookups, 99) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
