"""A local Alipay gateway for development and tests: gateway.do, a cashier, notifies, bills.

It speaks Alipay's wire format for the calls Ranqi makes (alipay.trade.wap.pay by GET
redirect, alipay.trade.precreate / query / close / refund and
alipay.data.dataservice.bill.downloadurl.query by signed form POST), checks the app's
RSA2 signature with the app's public key, and signs its answers and notifies with its
own "Alipay" key. Simplified, on purpose: a precreated trade is WAIT_BUYER_PAY at once
(real Alipay knows it only after the scan); bills are served for any day, today
included, at an unauthenticated URL, with utf-8 file names inside the zip (Alipay's
are GBK); refunds succeed at once. Sandbox only: never mount it in production.
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import io
import json
import os
import secrets
import threading
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa
from flask import Blueprint, Response, abort, redirect, render_template_string, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from payments.alipay import (
    BEIJING,
    TIME_FORMAT,
    AlipayConfig,
    fen_to_yuan,
    format_beijing,
    load_private_key,
    notify_sign_content,
    request_sign_content,
    sign_rsa2,
    verify_rsa2,
    yuan_to_fen,
)
from payments.sandbox.store import SandboxStore

PROVIDER = "alipay"
#: Alipay's documented notify retries after the first attempt: 4m, 10m, 10m, 1h, 2h,
#: 6h, 15h — eight notifies within 25 hours
SCHEDULE: list[float] = [240, 600, 600, 3600, 7200, 21600, 54000]


def accepted(status: int, body: bytes) -> bool:
    """Alipay counts a notify as received only if the answer's body is ``success``."""
    return body.strip() == b"success"


# keys -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SandboxKeys:
    """The sandbox's key pair ("Alipay") and the merchant-side test key pair ("app")."""

    alipay_private_key_path: Path
    #: what the merchant trusts: AlipayConfig.alipay_public_key_path
    alipay_public_key_path: Path
    #: AlipayConfig.app_private_key_path (PKCS#1 PEM)
    app_private_key_path: Path
    #: what the sandbox checks the app's requests with
    app_public_key_path: Path

    def adapter_config(
        self, *, gateway_url: str, app_id: str, seller_id: str = "", notify_url: str = ""
    ) -> AlipayConfig:
        """An AlipayConfig pointing at a sandbox mounted at ``gateway_url`` (…/gateway.do)."""
        return AlipayConfig(
            app_id=app_id,
            app_private_key_path=self.app_private_key_path,
            alipay_public_key_path=self.alipay_public_key_path,
            gateway_url=gateway_url,
            seller_id=seller_id,
            notify_url=notify_url,
        )

    def sandbox_config(self, *, app_id: str, seller_id: str, public_url: str = "") -> SandboxConfig:
        """The SandboxConfig that trusts this app key and signs with this Alipay key."""
        return SandboxConfig(
            app_id=app_id,
            seller_id=seller_id,
            app_public_key_path=self.app_public_key_path,
            alipay_private_key_path=self.alipay_private_key_path,
            public_url=public_url,
        )


def ensure_sandbox_keys(directory: Path | str) -> SandboxKeys:
    """Create (once) both RSA-2048 key pairs under ``directory``; return their paths."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    keys = SandboxKeys(
        alipay_private_key_path=folder / "alipay_private_key.pem",
        alipay_public_key_path=folder / "alipay_public_key.pem",
        app_private_key_path=folder / "app_private_key.pem",
        app_public_key_path=folder / "app_public_key.pem",
    )
    # Several workers may start at once: one makes the keys, the others wait and reuse.
    with open(folder / ".keys.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for private, public in (
            (keys.alipay_private_key_path, keys.alipay_public_key_path),
            (keys.app_private_key_path, keys.app_public_key_path),
        ):
            if private.exists() and public.exists():
                continue
            key = crypto_rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write(
                private,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1, as the SDK wants
                    serialization.NoEncryption(),
                ),
                mode=0o600,
            )
            _write(
                public,
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
                mode=0o644,
            )
    return keys


def _write(path: Path, data: bytes, *, mode: int) -> None:
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


# the gateway ------------------------------------------------------------------------
@dataclass(frozen=True)
class SandboxConfig:
    """Which app the sandbox serves and the keys it checks and signs with."""

    app_id: str
    #: the merchant's PID the sandbox reports as seller_id
    seller_id: str
    app_public_key_path: Path
    alipay_private_key_path: Path
    #: scheme://host[:port] for links handed to phones (QR codes); default: the request's
    public_url: str = ""


class _Refused(Exception):
    """A gateway call Alipay would answer with an error object."""

    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str) -> None:
        super().__init__(sub_msg)
        self.answer = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}


def _business(sub_code: str, sub_msg: str) -> _Refused:
    return _Refused("40004", "Business Failed", sub_code, sub_msg)


def create_blueprint(store: SandboxStore, config: SandboxConfig) -> Blueprint:
    """The sandbox Alipay gateway, to be mounted under ``/sandbox/alipay``."""
    blueprint = Blueprint("alipay_sandbox", __name__)
    alipay_key = load_private_key(config.alipay_private_key_path)
    app_public_pem = Path(config.app_public_key_path).read_text("ascii")
    refund_lock = threading.Lock()

    def signed_answer(method: str, body: dict[str, Any]) -> Response:
        inner = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        key = method.replace(".", "_") + "_response"
        sign = sign_rsa2(alipay_key, inner)
        text = f'{{"{key}":{inner},"sign":"{sign}"}}'
        # Alipay's gateway labels its JSON answers text/html.
        return Response(text.encode("utf-8"), content_type="text/html;charset=utf-8")

    def external(endpoint: str, **values: Any) -> str:
        if config.public_url:
            return config.public_url.rstrip("/") + url_for(endpoint, **values)
        return url_for(endpoint, _external=True, **values)

    def check_request() -> tuple[str, dict[str, str]]:
        """The verified parameters of a gateway call (query string and form together)."""
        params: dict[str, str] = {}
        for source in (request.args, request.form):
            for key, values in source.lists():
                if key in params or len(values) != 1:
                    raise _Refused("40002", "Invalid Arguments", "isv.invalid-arguments", key)
                params[key] = values[0]
        method = params.get("method", "")
        if not method:
            raise _Refused(
                "40001", "Missing Required Arguments", "isv.missing-method", "缺少方法名参数"
            )
        if not params.get("sign"):
            raise _Refused(
                "40001", "Missing Required Arguments", "isv.missing-signature", "缺少签名参数"
            )
        if params.get("sign_type") != "RSA2":
            raise _Refused(
                "40002", "Invalid Arguments", "isv.invalid-signature-type", "无效签名类型"
            )
        try:
            # Only the format: the SDK's page_execute stamps the server's local time,
            # which is not Beijing time on a UTC host.
            dt.datetime.strptime(params.get("timestamp", ""), TIME_FORMAT).replace(tzinfo=BEIJING)
        except ValueError as exc:
            raise _Refused(
                "40002", "Invalid Arguments", "isv.invalid-timestamp", "非法的时间戳参数"
            ) from exc
        if params.get("app_id") != config.app_id:
            raise _Refused("40002", "Invalid Arguments", "isv.invalid-app-id", "无效的AppID参数")
        content = request_sign_content(params).encode("utf-8")
        if not verify_rsa2(app_public_pem, content, params["sign"]):
            raise _Refused(
                "40002",
                "Invalid Arguments",
                "isv.invalid-signature",
                "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配",
            )
        return method, params

    def biz_content(params: dict[str, str]) -> dict[str, Any]:
        try:
            biz = json.loads(params.get("biz_content", ""))
        except ValueError as exc:
            raise _business("ACQ.INVALID_PARAMETER", "biz_content 不是 JSON") from exc
        if not isinstance(biz, dict):
            raise _business("ACQ.INVALID_PARAMETER", "biz_content 不是对象")
        return biz

    def amount_of(biz: dict[str, Any], name: str) -> int:
        try:
            return yuan_to_fen(str(biz.get(name, "")))
        except ValueError as exc:
            raise _business("ACQ.INVALID_PARAMETER", f"{name} 无效: {exc}") from exc

    def open_trade(params: dict[str, str], biz: dict[str, Any], scene: str) -> dict[str, Any]:
        """Create the trade a wap.pay / precreate call describes, or find the same one."""
        order_no = str(biz.get("out_trade_no", ""))
        subject = str(biz.get("subject", ""))
        if not order_no or not subject:
            raise _business("ACQ.INVALID_PARAMETER", "缺少 out_trade_no 或 subject")
        amount = amount_of(biz, "total_amount")
        time_expire = str(biz.get("time_expire", ""))
        if time_expire and _beijing_passed(time_expire):
            raise _business("ACQ.TRADE_HAS_CLOSE", "交易已关闭 (time_expire passed)")
        trade = store.create_trade(
            provider=PROVIDER,
            order_no=order_no,
            trade_no=_trade_no(),
            app_id=config.app_id,
            merchant_id=config.seller_id,
            amount=amount,
            subject=subject,
            status="pending",
            notify_url=params.get("notify_url", ""),
            return_url=params.get("return_url", ""),
            extra={
                "scene": scene,
                "time_expire": time_expire,
                "quit_url": str(biz.get("quit_url", "")),
                "buyer_logon_id": "138****" + f"{secrets.randbelow(10000):04d}",
                "buyer_id": "2088" + "".join(str(secrets.randbelow(10)) for _ in range(12)),
            },
        )
        if trade["amount"] != amount or trade["subject"] != subject:
            raise _business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
        trade = expire(trade)
        if trade["status"] == "paid":
            raise _business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
        if trade["status"] == "closed":
            raise _business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
        return trade

    def expire(trade: dict[str, Any]) -> dict[str, Any]:
        """Close a trade whose time_expire has passed, as Alipay does on its own."""
        limit = trade["extra"].get("time_expire", "")
        if trade["status"] == "pending" and limit and _beijing_passed(limit):
            store.set_status(PROVIDER, trade["order_no"], "closed", only_from=("pending",))
            return store.trade(PROVIDER, trade["order_no"]) or trade
        return trade

    def find_trade(biz: dict[str, Any]) -> dict[str, Any]:
        trade = None
        if biz.get("out_trade_no"):
            trade = store.trade(PROVIDER, str(biz["out_trade_no"]))
        elif biz.get("trade_no"):
            trade = store.trade_by_no(str(biz["trade_no"]))
        if trade is None or trade["app_id"] != config.app_id:
            raise _business("ACQ.TRADE_NOT_EXIST", "交易不存在")
        return expire(trade)

    def trade_status(trade: dict[str, Any]) -> str:
        if trade["status"] == "paid":
            fully_refunded = store.refunded_total(PROVIDER, trade["order_no"]) >= trade["amount"]
            return "TRADE_CLOSED" if fully_refunded else "TRADE_SUCCESS"
        return {"pending": "WAIT_BUYER_PAY", "closed": "TRADE_CLOSED"}[trade["status"]]

    def queue_trade_notify(trade: dict[str, Any], fields: dict[str, str]) -> int:
        """Sign and queue the trade_status_sync notify Alipay would send about ``trade``."""
        if not trade["notify_url"]:
            return 0
        total = fields.pop("total_amount", fen_to_yuan(trade["amount"]))
        params = {
            "gmt_create": _beijing_of(trade["created_at"]),
            "charset": "utf-8",
            "seller_id": trade["merchant_id"],
            "subject": trade["subject"],
            "buyer_id": trade["extra"]["buyer_id"],
            "buyer_logon_id": trade["extra"]["buyer_logon_id"],
            "invoice_amount": total,
            "notify_id": secrets.token_hex(16),
            "fund_bill_list": json.dumps(
                [{"amount": total, "fundChannel": "ALIPAYACCOUNT"}], separators=(",", ":")
            ),
            "notify_type": "trade_status_sync",
            "receipt_amount": total,
            "buyer_pay_amount": total,
            "app_id": trade["app_id"],
            "auth_app_id": trade["app_id"],
            "point_amount": "0.00",
            "notify_time": dt.datetime.now(BEIJING).strftime(TIME_FORMAT),
            "version": "1.0",
            "out_trade_no": trade["order_no"],
            "total_amount": total,
            "trade_no": trade["trade_no"],
            "sign_type": "RSA2",
        }
        if trade["paid_at"]:
            params["gmt_payment"] = _beijing_of(trade["paid_at"])
        params.update(fields)
        params["sign"] = sign_rsa2(alipay_key, notify_sign_content(params))
        body = urllib.parse.urlencode(params).encode("ascii")
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        return store.queue_notify(PROVIDER, trade["order_no"], trade["notify_url"], body, headers)

    def pay(trade: dict[str, Any], amount: int | None = None) -> int:
        """Mark a waiting trade paid and queue its TRADE_SUCCESS notify; the notify's id."""
        if not store.set_status(PROVIDER, trade["order_no"], "paid", only_from=("pending",)):
            raise _business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        paid = store.trade(PROVIDER, trade["order_no"])
        assert paid is not None
        fields = {"trade_status": "TRADE_SUCCESS"}
        if amount is not None:  # sandbox-only: a notify whose amount differs from the order
            fields["total_amount"] = fen_to_yuan(amount)
        return queue_trade_notify(paid, fields)

    # calls --------------------------------------------------------------------------
    def precreate(params: dict[str, str], biz: dict[str, Any]) -> dict[str, Any]:
        trade = open_trade(params, biz, "qr")
        return {
            "code": "10000",
            "msg": "Success",
            "out_trade_no": trade["order_no"],
            "qr_code": external(".cashier", trade_no=trade["trade_no"]),
        }

    def query(params: dict[str, str], biz: dict[str, Any]) -> dict[str, Any]:
        trade = find_trade(biz)
        answer = {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade["trade_no"],
            "out_trade_no": trade["order_no"],
            "buyer_logon_id": trade["extra"]["buyer_logon_id"],
            "trade_status": trade_status(trade),
            "total_amount": fen_to_yuan(trade["amount"]),
            "subject": trade["subject"],
        }
        if trade["paid_at"]:
            answer.update(
                buyer_pay_amount=answer["total_amount"],
                receipt_amount=answer["total_amount"],
                invoice_amount=answer["total_amount"],
                point_amount="0.00",
                send_pay_date=_beijing_of(trade["paid_at"]),
                buyer_user_id=trade["extra"]["buyer_id"],
            )
        return answer

    def close(params: dict[str, str], biz: dict[str, Any]) -> dict[str, Any]:
        trade = find_trade(biz)
        if trade["status"] == "paid":
            raise _business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        store.set_status(PROVIDER, trade["order_no"], "closed", only_from=("pending",))
        return {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade["trade_no"],
            "out_trade_no": trade["order_no"],
        }

    def refund(params: dict[str, str], biz: dict[str, Any]) -> dict[str, Any]:
        trade = find_trade(biz)
        amount = amount_of(biz, "refund_amount")
        # Without out_request_no Alipay treats the call as the one full refund.
        refund_no = str(biz.get("out_request_no") or trade["order_no"])
        if trade["status"] != "paid":
            raise _business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        with refund_lock:  # check-then-insert; one sandbox process at a time
            before = store.refunded_total(PROVIDER, trade["order_no"])
            repeat = _refund_exists(store, refund_no)
            if repeat is None and before + amount > trade["amount"]:
                raise _business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
            if repeat is not None and (repeat["order_no"], repeat["amount"]) != (
                trade["order_no"],
                amount,
            ):
                raise _business("ACQ.INVALID_PARAMETER", "退款请求号已用于另一笔退款")
            store.add_refund(PROVIDER, refund_no, trade["order_no"], amount)
            after = store.refunded_total(PROVIDER, trade["order_no"])
        now = dt.datetime.now(BEIJING)
        if repeat is None:
            full = after >= trade["amount"]
            queue_trade_notify(
                trade,
                {
                    "trade_status": "TRADE_CLOSED" if full else "TRADE_SUCCESS",
                    "out_biz_no": refund_no,
                    "refund_fee": fen_to_yuan(after),
                    "gmt_refund": now.strftime(TIME_FORMAT) + f".{now.microsecond // 1000:03d}",
                },
            )
        return {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade["trade_no"],
            "out_trade_no": trade["order_no"],
            "buyer_logon_id": trade["extra"]["buyer_logon_id"],
            # Y: this call moved money; a repeated out_request_no moves none
            "fund_change": "Y" if repeat is None else "N",
            "refund_fee": fen_to_yuan(after),
            "send_back_fee": fen_to_yuan(amount),
            "gmt_refund_pay": now.strftime(TIME_FORMAT),
        }

    def bill_url(params: dict[str, str], biz: dict[str, Any]) -> dict[str, Any]:
        if biz.get("bill_type") not in ("trade", "signcustomer"):
            raise _business("ACQ.INVALID_PARAMETER", "bill_type 无效")
        try:
            day = dt.date.fromisoformat(str(biz.get("bill_date", "")))
        except ValueError as exc:
            raise _business("ACQ.INVALID_PARAMETER", "bill_date 须为 yyyy-MM-dd") from exc
        url = external(
            ".bill_file",
            bizType=biz["bill_type"],
            bizDates=day.strftime("%Y%m%d"),
            fileType="csv.zip",
            downloadFileName=f"{day:%Y%m%d}.csv.zip",
        )
        return {"code": "10000", "msg": "Success", "bill_download_url": url}

    calls = {
        "alipay.trade.precreate": precreate,
        "alipay.trade.query": query,
        "alipay.trade.close": close,
        "alipay.trade.refund": refund,
        "alipay.data.dataservice.bill.downloadurl.query": bill_url,
    }

    # routes -------------------------------------------------------------------------
    @blueprint.route("/gateway.do", methods=["GET", "POST"])
    def gateway() -> BaseResponse:
        """Alipay's one gateway: page calls by GET (the payer's browser), API calls by POST."""
        method = request.values.get("method", "")
        if request.method == "GET":
            try:
                method, params = check_request()
                if method != "alipay.trade.wap.pay":
                    raise _Refused("40002", "Invalid Arguments", "isv.invalid-method", method)
                trade = open_trade(params, biz_content(params), "wap")
            except _Refused as refused:
                return _page("错误 Error", refused.answer["sub_msg"], status=400)
            return redirect(url_for(".cashier", trade_no=trade["trade_no"]))
        try:
            method, params = check_request()
            call = calls.get(method)
            if call is None:
                raise _Refused("40002", "Invalid Arguments", "isv.invalid-method", "不存在的方法名")
            return signed_answer(method, call(params, biz_content(params)))
        except _Refused as refused:
            return signed_answer(method or "error", refused.answer)

    @blueprint.route("/cashier/<trade_no>", methods=["GET", "POST"])
    def cashier(trade_no: str) -> BaseResponse:
        """The payer's page: the trade and two buttons, 支付 Pay and 取消 Cancel."""
        found = store.trade_by_no(trade_no)
        if found is None or found["app_id"] != config.app_id:
            abort(404)
        trade = expire(found)
        notice = ""
        if request.method == "POST":
            action = request.form.get("action")
            if action == "pay" and trade["status"] == "pending":
                try:
                    pay(trade)
                except _Refused as refused:
                    notice = refused.answer["sub_msg"]
                paid = store.trade(PROVIDER, trade["order_no"]) or trade
                if paid["status"] == "paid" and paid["return_url"]:
                    return redirect(return_link(paid), code=303)
                trade = paid
            elif action == "cancel":
                # Cancelling only leaves the cashier; the trade waits until closed or expired.
                notice = "已取消 Cancelled"
                back = trade["extra"].get("quit_url") or trade["return_url"]
                if back:
                    return redirect(back, code=303)
        return Response(
            render_template_string(
                CASHIER_PAGE,
                trade=trade,
                amount=fen_to_yuan(trade["amount"]),
                notice=notice,
                status=trade_status(trade),
            ),
            content_type="text/html; charset=utf-8",
        )

    def return_link(trade: dict[str, Any]) -> str:
        """Where the payer's browser goes after paying: return_url with signed sync params."""
        params = {
            "charset": "utf-8",
            "out_trade_no": trade["order_no"],
            "method": "alipay.trade.wap.pay.return",
            "total_amount": fen_to_yuan(trade["amount"]),
            "trade_no": trade["trade_no"],
            "auth_app_id": trade["app_id"],
            "version": "1.0",
            "app_id": trade["app_id"],
            "sign_type": "RSA2",
            "seller_id": trade["merchant_id"],
            "timestamp": dt.datetime.now(BEIJING).strftime(TIME_FORMAT),
        }
        params["sign"] = sign_rsa2(alipay_key, notify_sign_content(params))
        joiner = "&" if "?" in trade["return_url"] else "?"
        return str(trade["return_url"]) + joiner + urllib.parse.urlencode(params)

    @blueprint.route("/bill/downloadBillFile.resource")
    def bill_file() -> BaseResponse:
        """The day's trade bill as Alipay ships it: a zip of two GBK CSV files."""
        try:
            day = (
                dt.datetime.strptime(request.args.get("bizDates", ""), "%Y%m%d")
                .replace(tzinfo=BEIJING)
                .date()
            )
        except ValueError:
            abort(404)
        data = bill_zip(store, config.seller_id, day)
        return Response(
            data,
            content_type="application/zip",
            headers={"Content-Disposition": f"attachment; filename={day:%Y%m%d}.csv.zip"},
        )

    @blueprint.route("/_test/pay", methods=["POST"])
    def test_pay() -> BaseResponse:
        """SANDBOX ONLY: pay a trade as if the payer did, optionally notifying another amount.

        JSON {"order_no": ..., "amount": fen?}; answers {"trade_no", "notify_id"}.
        """
        data = request.get_json(silent=True)
        if not isinstance(data, dict) or not isinstance(data.get("order_no"), str):
            return Response('{"error":"order_no required"}', 400, content_type="application/json")
        amount = data.get("amount")
        if amount is not None and (
            isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0
        ):
            return Response('{"error":"amount: fen > 0"}', 400, content_type="application/json")
        trade = store.trade(PROVIDER, data["order_no"])
        if trade is None:
            return Response('{"error":"no such trade"}', 404, content_type="application/json")
        try:
            notify_id = pay(expire(trade), amount)
        except _Refused as refused:
            body = json.dumps({"error": refused.answer["sub_code"]})
            return Response(body, 409, content_type="application/json")
        body = json.dumps({"trade_no": trade["trade_no"], "notify_id": notify_id})
        return Response(body, 200, content_type="application/json")

    return blueprint


def _refund_exists(store: SandboxStore, refund_no: str) -> dict[str, Any] | None:
    with store.connect() as conn:
        row = conn.execute(
            "SELECT * FROM refund WHERE provider = ? AND refund_no = ?", (PROVIDER, refund_no)
        ).fetchone()
        return dict(row) if row is not None else None


BILL_HEADER = [
    "支付宝交易号",
    "商户订单号",
    "业务类型",
    "商品名称",
    "创建时间",
    "完成时间",
    "门店编号",
    "门店名称",
    "操作员",
    "终端号",
    "对方账户",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝红包（元）",
    "集分宝（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "券核销金额（元）",
    "券名称",
    "商家红包消费金额（元）",
    "卡消费金额（元）",
    "退款批次号/请求号",
    "服务费（元）",
    "分润（元）",
    "备注",
]


def bill_zip(store: SandboxStore, seller_id: str, day: dt.date) -> bytes:
    """The 业务明细 and 业务明细(汇总) CSVs (GBK) of ``day``, zipped like Alipay's."""
    trades = store.trades_on(PROVIDER, day)
    refunds = store.refunds_on(PROVIDER, day)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    start = f"{day:%Y年%m月%d日} 00:00:00"
    end = f"{day + dt.timedelta(days=1):%Y年%m月%d日} 00:00:00"
    out.write("#支付宝业务明细查询\r\n")
    out.write(f"#账号：[{seller_id}0156]\r\n")
    out.write(f"#起始日期：[{start}]   终止日期：[{end}]\r\n")
    out.write("#" + "-" * 41 + "业务明细列表" + "-" * 40 + "\r\n")
    writer.writerow(BILL_HEADER)
    received = 0
    for trade in trades:
        amount = fen_to_yuan(trade["amount"])
        received += trade["amount"]
        writer.writerow(
            [
                trade["trade_no"] + "\t",  # Alipay's tabs keep long numbers text in Excel
                trade["order_no"] + "\t",
                "交易",
                trade["subject"],
                _beijing_of(trade["created_at"]),
                _beijing_of(trade["paid_at"]),
                "",
                "",
                "",
                "",
                trade["extra"].get("buyer_logon_id", ""),
                amount,
                amount,
                *["0.00"] * 5,
                "",
                "0.00",
                "0.00",
                "",
                "0.00",
                "0.00",
                "",
            ]
        )
    for refund in refunds:
        refunded = store.trade(PROVIDER, refund["order_no"])
        if refunded is None:
            continue
        received -= refund["amount"]
        writer.writerow(
            [
                refunded["trade_no"] + "\t",
                refunded["order_no"] + "\t",
                "退款",
                refunded["subject"],
                _beijing_of(refunded["created_at"]),
                _beijing_of(refund["created_at"]),
                "",
                "",
                "",
                "",
                refunded["extra"].get("buyer_logon_id", ""),
                fen_to_yuan(refunded["amount"]),
                "-" + fen_to_yuan(refund["amount"]),
                *["0.00"] * 5,
                "",
                "0.00",
                "0.00",
                refund["refund_no"] + "\t",
                "0.00",
                "0.00",
                "",
            ]
        )
    out.write("#" + "-" * 41 + "业务明细列表结束" + "-" * 36 + "\r\n")
    out.write(f"#交易合计：{len(trades)}笔，退款合计：{len(refunds)}笔\r\n")
    exported = dt.datetime.now(BEIJING)
    out.write(f"#导出时间：[{exported:%Y年%m月%d日 %H:%M:%S}]\r\n")
    summary = (
        "#支付宝业务汇总查询\r\n"
        f"#账号：[{seller_id}0156]\r\n"
        "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）\r\n"
        f"合计,,{len(trades)},{len(refunds)},,{_signed_yuan(received)}\r\n"
    )
    buffer = io.BytesIO()
    stem = f"{seller_id}_{day:%Y%m%d}"
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        # GBK has no "³" and the like: Alipay's files show such characters as "?".
        archive.writestr(f"{stem}_业务明细.csv", out.getvalue().encode("gbk", errors="replace"))
        archive.writestr(f"{stem}_业务明细(汇总).csv", summary.encode("gbk", errors="replace"))
    return buffer.getvalue()


def _signed_yuan(fen: int) -> str:
    return ("-" if fen < 0 else "") + (fen_to_yuan(abs(fen)) if fen else "0.00")


def _trade_no() -> str:
    """A trade number shaped like Alipay's: date, "22001", 15 digits."""
    digits = "".join(str(secrets.randbelow(10)) for _ in range(15))
    return f"{dt.datetime.now(BEIJING):%Y%m%d}22001{digits}"


def _beijing_of(iso: str) -> str:
    """A stored UTC ISO time as Alipay writes times (Beijing, no offset)."""
    return format_beijing(dt.datetime.fromisoformat(iso))


def _beijing_passed(text: str) -> bool:
    try:
        limit = dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=BEIJING)
    except ValueError:
        return False
    return dt.datetime.now(BEIJING) >= limit


def _page(title: str, message: str, *, status: int = 200) -> Response:
    html = render_template_string(MESSAGE_PAGE, title=title, message=message)
    return Response(html, status, content_type="text/html; charset=utf-8")


_STYLE = """
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,-apple-system,"PingFang SC","Microsoft YaHei",sans-serif;
      margin:0;background:#f5f5f5;color:#222}
 main{max-width:28rem;margin:0 auto;padding:1rem}
 .card{background:#fff;border-radius:.75rem;padding:1.25rem;margin-bottom:1rem}
 .amount{font-size:2.25rem;font-weight:600;text-align:center;margin:.5rem 0}
 dl{display:grid;grid-template-columns:auto 1fr;gap:.4rem 1rem;margin:0}
 dt{color:#666} dd{margin:0;word-break:break-all}
 button{display:block;width:100%;font-size:1.1rem;padding:.9rem;border:0;
        border-radius:.5rem;margin-top:.75rem}
 .pay{background:#1677ff;color:#fff} .cancel{background:#e8e8e8;color:#222}
 .banner{background:#fff3cd;padding:.5rem .75rem;border-radius:.5rem}
 .sandbox{color:#b00;text-align:center;font-size:.85rem}
</style>
"""

CASHIER_PAGE = (
    """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>支付宝收银台 Alipay cashier (sandbox)</title>
"""
    + _STYLE
    + """</head><body><main>
<p class="sandbox">沙箱环境，不会扣款 · Sandbox, no real money</p>
<div class="card">
  <div class="amount">¥{{ amount }}</div>
  <dl>
    <dt>商品 Item</dt><dd>{{ trade.subject }}</dd>
    <dt>订单号 Order</dt><dd>{{ trade.order_no }}</dd>
    <dt>交易号 Trade</dt><dd>{{ trade.trade_no }}</dd>
    <dt>状态 Status</dt><dd id="status">{{ status }}</dd>
  </dl>
</div>
{% if notice %}<p class="banner">{{ notice }}</p>{% endif %}
{% if status == "WAIT_BUYER_PAY" %}
<form method="post" class="card">
  <button class="pay" name="action" value="pay" type="submit">支付 Pay</button>
  <button class="cancel" name="action" value="cancel" type="submit">取消 Cancel</button>
</form>
{% elif status == "TRADE_SUCCESS" %}
<p class="card">支付成功 Paid</p>
{% else %}
<p class="card">交易已关闭 Trade closed</p>
{% endif %}
</main></body></html>
"""
)

MESSAGE_PAGE = (
    """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>{{ title }}</title>
"""
    + _STYLE
    + """</head><body><main><div class="card"><h1>{{ title }}</h1><p>{{ message }}</p></div>
</main></body></html>
"""
)

__all__ = [
    "SCHEDULE",
    "SandboxConfig",
    "SandboxKeys",
    "accepted",
    "bill_zip",
    "create_blueprint",
    "ensure_sandbox_keys",
]
