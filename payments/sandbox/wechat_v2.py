"""Local WeChat Pay API v2 gateway: XML calls, signed answers and notifies, a cashier page.

Mounted by the portal under ``/sandbox/wechat_v2`` in development only. It speaks v2's
wire format for what Ranqi uses: ``/pay/unifiedorder`` (JSAPI, MWEB, NATIVE),
``/pay/orderquery``, ``/pay/closeorder``, ``/secapi/pay/refund``, ``/pay/refundquery``
and ``/pay/downloadbill``. It checks the merchant's sign (MD5 or HMAC-SHA256, by
``sign_type``) and signs its answers and notifies with the same API key, as WeChat
does: v2 has one shared secret per merchant, no key pair.

Simplifications, on purpose:
- no TLS client certificate on ``/secapi/pay/refund`` (the sandbox is plain HTTP);
- refunds succeed at once (``refund_status`` SUCCESS), no refund notify is sent;
- the bill is available for any day right away (WeChat: from 10:00 the next day),
  fee 0.60% rounded half up per row, no coupons; only types ALL, SUCCESS and REFUND;
- an expired order cannot be paid at the cashier but still queries as NOTPAY until it
  is closed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import string
import threading
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, redirect, render_template_string, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from payments.sandbox.store import SandboxStore
from payments.wechat_v2 import CHINA, HMAC_SHA256, MD5, WechatV2Config, load_api_key, parse_xml

PROVIDER: Final = "wechat_v2"
#: WeChat Pay v2's documented notify retry waits (seconds):
#: 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h
SCHEDULE: list[float] = [
    15,
    15,
    30,
    180,
    600,
    1200,
    1800,
    1800,
    1800,
    3600,
    10800,
    10800,
    10800,
    21600,
    21600,
]
SANDBOX_APPID: Final = "wx5ad0b0x5andb0x02"
SANDBOX_MCH_ID: Final = "1900000109"
#: the payer every sandbox payment outside JSAPI is made by
SANDBOX_OPENID: Final = "oSandboxPayer0000000000000000"

BILL_HEADER: Final = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
    "交易状态,付款银行,货币种类,应结订单总金额,代金券金额,微信退款单号,商户退款单号,退款金额,"
    "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)
BILL_SUMMARY_HEADER: Final = (
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
)
_FEE_RATE: Final = Decimal("0.006")


def accepted(status: int, body: bytes) -> bool:
    """How WeChat reads our answer to a notify: HTTP 200 and return_code SUCCESS."""
    if status != 200:
        return False
    try:
        return parse_xml(body).get("return_code") == "SUCCESS"
    except ValueError:
        return False


@dataclass(frozen=True)
class WechatV2SandboxConfig:
    """Who the sandbox pretends the merchant is, and where payers' browsers reach it."""

    appid: str
    mch_id: str
    api_key_path: Path  #: the same API key file the adapter reads (v2 keys are shared)
    #: the sandbox's base URL as payers' browsers see it ("https://.../sandbox/wechat_v2");
    #: empty: the URL the merchant called it at
    public_url: str = ""


@dataclass(frozen=True)
class SandboxKeys:
    """The merchant identity and key file made by :func:`ensure_sandbox_keys`."""

    appid: str
    mch_id: str
    api_key_path: Path

    def sandbox_config(self, public_url: str = "") -> WechatV2SandboxConfig:
        return WechatV2SandboxConfig(self.appid, self.mch_id, self.api_key_path, public_url)

    def adapter_config(
        self, api_base_url: str, notify_url: str, sign_type: str = HMAC_SHA256
    ) -> WechatV2Config:
        """The adapter's config pointing at the sandbox mounted at ``api_base_url``."""
        return WechatV2Config(
            appid=self.appid,
            mch_id=self.mch_id,
            api_key_path=self.api_key_path,
            notify_url=notify_url,
            sign_type=sign_type,
            api_base_url=api_base_url,
        )


def ensure_sandbox_keys(directory: Path | str) -> SandboxKeys:
    """Make the sandbox merchant's 32-character API key under ``directory`` once; reuse it.

    v2 signs with a secret shared by WeChat and the merchant, so the one file the
    merchant must trust is ``api_key.txt`` itself (mode 0600).
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "api_key.txt"
    alphabet = string.ascii_letters + string.digits
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write("".join(secrets.choice(alphabet) for _ in range(32)) + "\n")
    return SandboxKeys(appid=SANDBOX_APPID, mch_id=SANDBOX_MCH_ID, api_key_path=path)


# -- the wire format, written from WeChat's documentation (not from wechatpy), so the
# -- tests cross-check the SDK against an independent implementation ------------------
def wechat_sign(fields: dict[str, str], api_key: str, sign_type: str) -> str:
    """v2 sign: non-empty fields but ``sign`` sorted as k=v&..., then &key=API_KEY."""
    text = "&".join(f"{k}={v}" for k, v in sorted(fields.items()) if k != "sign" and v != "")
    text += f"&key={api_key}"
    if sign_type == HMAC_SHA256:
        digest = hmac.new(api_key.encode(), text.encode(), hashlib.sha256).hexdigest()
    elif sign_type == MD5:
        digest = hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - WeChat's MD5 sign type
    else:
        raise ValueError(f"unknown sign_type {sign_type!r}")
    return digest.upper()


def to_xml(fields: dict[str, str]) -> bytes:
    """Fields as WeChat's flat ``<xml>`` with CDATA text."""
    parts = ["<xml>"]
    for key, value in fields.items():
        # "]]>" cannot stand inside CDATA: end the section and start another around it
        safe = value.replace("]]>", "]]]]><![CDATA[>")
        parts.append(f"<{key}><![CDATA[{safe}]]></{key}>")
    parts.append("</xml>")
    return "".join(parts).encode("utf-8")


class _Fail(Exception):
    """return_code FAIL: the call itself is wrong (sign, format); answered unsigned."""


class _BizFail(Exception):
    """result_code FAIL with err_code: a signed business refusal."""

    def __init__(self, err_code: str, description: str) -> None:
        super().__init__(description)
        self.err_code = err_code
        self.description = description


def create_blueprint(store: SandboxStore, config: WechatV2SandboxConfig) -> Blueprint:
    """The WeChat Pay v2 sandbox gateway as a blueprint; mount it at ``/sandbox/wechat_v2``."""
    api_key = load_api_key(config.api_key_path)
    bp = Blueprint("sandbox_wechat_v2", __name__)
    # refunds check the refundable rest and then insert: one at a time per process
    refund_lock = threading.Lock()

    def public_url() -> str:
        return (
            config.public_url.rstrip("/")
            or url_for(".cashier", _external=True).rsplit("/cashier", 1)[0]
        )

    def xml_response(fields: dict[str, str]) -> Response:
        return Response(to_xml(fields), status=200, content_type="text/xml; charset=utf-8")

    def call(handler: Any) -> Response:
        """Verify the merchant's signed XML, run ``handler``, answer signed XML."""
        try:
            fields = parse_xml(request.get_data())
        except ValueError:
            return xml_response({"return_code": "FAIL", "return_msg": "XML_FORMAT_ERROR"})
        sign_type = fields.get("sign_type") or MD5
        try:
            if sign_type not in (MD5, HMAC_SHA256):
                raise _Fail("签名类型错误 invalid sign_type")
            if fields.get("appid") != config.appid or fields.get("mch_id") != config.mch_id:
                raise _Fail("appid和mch_id不匹配 appid and mch_id do not match")
            if not fields.get("nonce_str"):
                raise _Fail("缺少参数nonce_str")
            given = fields.get("sign", "")
            if not hmac.compare_digest(
                given.encode("utf-8", "replace"), wechat_sign(fields, api_key, sign_type).encode()
            ):
                raise _Fail("签名错误")
            try:
                answer: dict[str, str] = handler(fields)
                result = {"result_code": "SUCCESS"}
            except _BizFail as exc:
                answer = {}
                result = {
                    "result_code": "FAIL",
                    "err_code": exc.err_code,
                    "err_code_des": exc.description,
                }
        except _Fail as exc:
            return xml_response({"return_code": "FAIL", "return_msg": str(exc)})
        signed = {
            "return_code": "SUCCESS",
            "return_msg": "OK",
            "appid": config.appid,
            "mch_id": config.mch_id,
            "nonce_str": secrets.token_hex(16),
            **result,
            **answer,
        }
        signed["sign"] = wechat_sign(signed, api_key, sign_type)
        return xml_response(signed)

    def find_trade(fields: dict[str, str]) -> dict[str, Any]:
        trade = None
        if fields.get("transaction_id"):
            trade = store.trade_by_no(fields["transaction_id"])
        elif fields.get("out_trade_no"):
            trade = store.trade(PROVIDER, fields["out_trade_no"])
        else:
            raise _Fail("缺少参数 out_trade_no or transaction_id")
        if trade is None or trade["provider"] != PROVIDER:
            raise _BizFail("ORDERNOTEXIST", "此交易订单号不存在 order does not exist")
        return trade

    def trade_by_prepay_id(prepay_id: str) -> dict[str, Any] | None:
        with store.connect() as conn:
            row = conn.execute(
                "SELECT order_no FROM trade WHERE provider = ? "
                "AND json_extract(extra, '$.prepay_id') = ?",
                (PROVIDER, prepay_id),
            ).fetchone()
        return store.trade(PROVIDER, row["order_no"]) if row is not None else None

    def pay(trade: dict[str, Any], amount: int | None = None) -> int:
        """Queue the notify WeChat sends for a paid trade (total_fee may be overridden)."""
        fresh = store.trade(PROVIDER, trade["order_no"]) or trade
        paid_at = _parse_iso(fresh["paid_at"]) if fresh["paid_at"] else _utcnow()
        fee = str(amount if amount is not None else fresh["amount"])
        extra = fresh["extra"]
        body = {
            "appid": fresh["app_id"],
            "mch_id": fresh["merchant_id"],
            "nonce_str": secrets.token_hex(16),
            "sign_type": extra.get("sign_type", MD5),
            "return_code": "SUCCESS",
            "result_code": "SUCCESS",
            "openid": extra.get("openid") or SANDBOX_OPENID,
            "is_subscribe": "N",
            "trade_type": extra["trade_type"],
            "bank_type": "OTHERS",
            "total_fee": fee,
            "cash_fee": fee,
            "fee_type": "CNY",
            "transaction_id": fresh["trade_no"],
            "out_trade_no": fresh["order_no"],
            "time_end": paid_at.astimezone(CHINA).strftime("%Y%m%d%H%M%S"),
        }
        body["sign"] = wechat_sign(body, api_key, body["sign_type"])
        return store.queue_notify(
            PROVIDER,
            fresh["order_no"],
            fresh["notify_url"],
            to_xml(body),
            {"Content-Type": "text/xml"},
        )

    # -- the merchant's API ----------------------------------------------------------------
    @bp.post("/pay/unifiedorder")
    def unifiedorder() -> Response:
        def handle(fields: dict[str, str]) -> dict[str, str]:
            for name in (
                "body",
                "out_trade_no",
                "total_fee",
                "spbill_create_ip",
                "notify_url",
                "trade_type",
            ):
                if not fields.get(name):
                    raise _BizFail("PARAM_ERROR", f"缺少参数 missing {name}")
            trade_type = fields["trade_type"]
            if trade_type not in {"JSAPI", "MWEB", "NATIVE"}:
                raise _BizFail("PARAM_ERROR", f"trade_type {trade_type} not supported here")
            if trade_type == "JSAPI" and not fields.get("openid"):
                raise _BizFail("PARAM_ERROR", "JSAPI支付必须传openid")
            if trade_type == "NATIVE" and not fields.get("product_id"):
                raise _BizFail("PARAM_ERROR", "NATIVE支付必须传product_id")
            if trade_type == "MWEB" and not fields.get("scene_info"):
                raise _BizFail("PARAM_ERROR", "MWEB支付必须传scene_info")
            order_no = fields["out_trade_no"]
            if len(order_no) > 32:
                raise _BizFail("PARAM_ERROR", "out_trade_no 长度超过32")
            if not fields["total_fee"].isdigit() or int(fields["total_fee"]) <= 0:
                raise _BizFail("PARAM_ERROR", "total_fee 必须为正整数(分)")
            amount = int(fields["total_fee"])
            transaction_id = "4200" + "".join(secrets.choice(string.digits) for _ in range(24))
            prepay_id = (
                "wx" + _utcnow().astimezone(CHINA).strftime("%d%H%M%S") + secrets.token_hex(12)
            )
            trade = store.create_trade(
                provider=PROVIDER,
                order_no=order_no,
                trade_no=transaction_id,
                app_id=fields["appid"],
                merchant_id=fields["mch_id"],
                amount=amount,
                subject=fields["body"],
                status="pending",
                notify_url=fields["notify_url"],
                extra={
                    "prepay_id": prepay_id,
                    "trade_type": trade_type,
                    "openid": fields.get("openid", ""),
                    "sign_type": fields.get("sign_type") or MD5,
                    "time_expire": fields.get("time_expire", ""),
                },
            )
            if trade["trade_no"] != transaction_id:  # the order was placed before
                if trade["status"] == "paid":
                    raise _BizFail("ORDERPAID", "该订单已支付 order already paid")
                if trade["status"] == "closed":
                    raise _BizFail("ORDERCLOSED", "该订单已关闭 order closed")
                if trade["amount"] != amount or trade["extra"]["trade_type"] != trade_type:
                    raise _BizFail("INVALID_REQUEST", "201 商户订单号重复 out_trade_no reused")
                prepay_id = trade["extra"]["prepay_id"]
            answer = {"trade_type": trade_type, "prepay_id": prepay_id}
            cashier = f"{public_url()}/cashier?prepay_id={prepay_id}"
            if trade_type == "NATIVE":
                answer["code_url"] = cashier
            if trade_type == "MWEB":
                answer["mweb_url"] = cashier + "&package=" + secrets.token_hex(5)
            return answer

        return call(handle)

    @bp.post("/pay/orderquery")
    def orderquery() -> Response:
        def handle(fields: dict[str, str]) -> dict[str, str]:
            trade = find_trade(fields)
            answer = {
                "out_trade_no": trade["order_no"],
                "trade_type": trade["extra"]["trade_type"],
                "total_fee": str(trade["amount"]),
                "fee_type": "CNY",
            }
            if trade["status"] == "paid":
                refunded = store.refunded_total(PROVIDER, trade["order_no"]) > 0
                answer |= {
                    "trade_state": "REFUND" if refunded else "SUCCESS",
                    "trade_state_desc": "转入退款" if refunded else "支付成功",
                    "openid": trade["extra"].get("openid") or SANDBOX_OPENID,
                    "is_subscribe": "N",
                    "bank_type": "OTHERS",
                    "cash_fee": str(trade["amount"]),
                    "transaction_id": trade["trade_no"],
                    "time_end": _parse_iso(trade["paid_at"])
                    .astimezone(CHINA)
                    .strftime("%Y%m%d%H%M%S"),
                }
            elif trade["status"] == "closed":
                answer |= {"trade_state": "CLOSED", "trade_state_desc": "订单已关闭"}
            else:
                answer |= {"trade_state": "NOTPAY", "trade_state_desc": "订单未支付"}
            return answer

        return call(handle)

    @bp.post("/pay/closeorder")
    def closeorder() -> Response:
        def handle(fields: dict[str, str]) -> dict[str, str]:
            trade = find_trade(fields)
            if store.set_status(PROVIDER, trade["order_no"], "closed", only_from=("pending",)):
                return {}
            now = store.trade(PROVIDER, trade["order_no"]) or trade
            if now["status"] == "paid":
                raise _BizFail("ORDERPAID", "订单已支付，不能发起关单")
            raise _BizFail("ORDERCLOSED", "订单已关闭，无法重复关闭")

        return call(handle)

    @bp.post("/secapi/pay/refund")
    def refund() -> Response:
        def handle(fields: dict[str, str]) -> dict[str, str]:
            for name in ("out_refund_no", "total_fee", "refund_fee"):
                if not fields.get(name):
                    raise _BizFail("PARAM_ERROR", f"缺少参数 missing {name}")
            if not (fields["total_fee"].isdigit() and fields["refund_fee"].isdigit()):
                raise _BizFail("PARAM_ERROR", "total_fee / refund_fee 必须为整数(分)")
            total, amount = int(fields["total_fee"]), int(fields["refund_fee"])
            trade = find_trade(fields)
            if trade["status"] != "paid":
                raise _BizFail("TRADE_STATE_ERROR", "订单状态错误 the order is not paid")
            if total != trade["amount"] or amount <= 0:
                raise _BizFail("INVALID_REQUEST", "订单金额或退款金额与之前请求不一致")
            refund_no = fields["out_refund_no"]
            with refund_lock:
                existing = _refund(store, refund_no)
                if existing is not None:
                    if existing["order_no"] != trade["order_no"] or existing["amount"] != amount:
                        raise _BizFail("INVALID_REQUEST", "退款单号重复 out_refund_no reused")
                elif store.refunded_total(PROVIDER, trade["order_no"]) + amount > total:
                    raise _BizFail("ERROR", "累计退款金额大于支付金额 refunds exceed the payment")
                else:
                    store.add_refund(PROVIDER, refund_no, trade["order_no"], amount)
            return {
                "transaction_id": trade["trade_no"],
                "out_trade_no": trade["order_no"],
                "out_refund_no": refund_no,
                "refund_id": _refund_id(config.mch_id, refund_no),
                "refund_fee": str(amount),
                "total_fee": str(total),
                "cash_fee": str(total),
            }

        return call(handle)

    @bp.post("/pay/refundquery")
    def refundquery() -> Response:
        def handle(fields: dict[str, str]) -> dict[str, str]:
            if fields.get("out_refund_no"):
                refund = _refund(store, fields["out_refund_no"])
                if refund is None:
                    raise _BizFail("REFUNDNOTEXIST", "退款订单查询失败 refund does not exist")
                refunds = [refund]
                found = store.trade(PROVIDER, refund["order_no"])
                if found is None:
                    raise _BizFail("ORDERNOTEXIST", "此交易订单号不存在 order does not exist")
                trade = found
            else:
                trade = find_trade(fields)
                with store.connect() as conn:
                    rows = conn.execute(
                        "SELECT * FROM refund WHERE provider = ? AND order_no = ? "
                        "ORDER BY created_at",
                        (PROVIDER, trade["order_no"]),
                    ).fetchall()
                refunds = [dict(r) for r in rows]
                if not refunds:
                    raise _BizFail("REFUNDNOTEXIST", "退款订单查询失败 no refunds")
            answer = {
                "transaction_id": trade["trade_no"],
                "out_trade_no": trade["order_no"],
                "total_fee": str(trade["amount"]),
                "cash_fee": str(trade["amount"]),
                "refund_count": str(len(refunds)),
            }
            for i, item in enumerate(refunds):
                answer |= {
                    f"out_refund_no_{i}": item["refund_no"],
                    f"refund_id_{i}": _refund_id(config.mch_id, item["refund_no"]),
                    f"refund_fee_{i}": str(item["amount"]),
                    f"refund_status_{i}": "SUCCESS",
                    f"refund_success_time_{i}": _parse_iso(item["created_at"])
                    .astimezone(CHINA)
                    .strftime("%Y-%m-%d %H:%M:%S"),
                }
            return answer

        return call(handle)

    @bp.post("/pay/downloadbill")
    def downloadbill() -> Response:
        try:
            fields = parse_xml(request.get_data())
        except ValueError:
            return xml_response({"return_code": "FAIL", "return_msg": "XML_FORMAT_ERROR"})
        sign_type = fields.get("sign_type") or MD5
        valid = sign_type in (MD5, HMAC_SHA256) and hmac.compare_digest(
            fields.get("sign", "").encode("utf-8", "replace"),
            wechat_sign(fields, api_key, sign_type).encode(),
        )
        if not valid or fields.get("mch_id") != config.mch_id:
            return xml_response({"return_code": "FAIL", "return_msg": "签名错误"})
        bill_type = fields.get("bill_type") or "ALL"
        try:
            day = (
                dt.datetime.strptime(fields.get("bill_date", ""), "%Y%m%d")
                .replace(tzinfo=CHINA)
                .date()
            )
        except ValueError:
            return xml_response({"return_code": "FAIL", "return_msg": "invalid bill_date"})
        if bill_type not in {"ALL", "SUCCESS", "REFUND"}:
            return xml_response({"return_code": "FAIL", "return_msg": "invalid bill_type"})
        text = _bill(store, config, day, bill_type)
        if text is None:
            # WeChat answers a day without trades like this (error_code 20002)
            return xml_response(
                {"return_code": "FAIL", "return_msg": "No Bill Exist", "error_code": "20002"}
            )
        return Response(text.encode("utf-8"), status=200, content_type="text/plain; charset=utf-8")

    # -- the payer's side ----------------------------------------------------------------
    @bp.get("/cashier")
    def cashier() -> Response | str:
        trade = trade_by_prepay_id(request.args.get("prepay_id", ""))
        if trade is None:
            return Response(
                render_template_string(_PAGE, title="订单不存在 Unknown order", trade=None),
                status=404,
            )
        return render_template_string(
            _PAGE,
            title="微信支付 WeChat Pay (sandbox)",
            trade=trade,
            yuan=_yuan(trade["amount"]),
            prepay_id=trade["extra"]["prepay_id"],
            redirect_url=_safe_redirect(request.args.get("redirect_url", "")),
            expired=_expired(trade),
        )

    @bp.post("/cashier")
    def cashier_submit() -> BaseResponse | str:
        trade = trade_by_prepay_id(request.form.get("prepay_id", ""))
        if trade is None:
            return Response(
                render_template_string(_PAGE, title="订单不存在 Unknown order", trade=None),
                status=404,
            )
        back = _safe_redirect(request.form.get("redirect_url", ""))
        action = request.form.get("action")
        if action == "pay":
            if trade["status"] == "pending" and _expired(trade):
                outcome = "订单已过期 Order expired"
            elif store.set_status(PROVIDER, trade["order_no"], "paid", only_from=("pending",)):
                pay(trade)
                outcome = "支付成功 Paid"
            else:
                outcome = "订单已支付或已关闭 Already paid or closed"
        elif action == "cancel":
            outcome = "已取消支付 Payment cancelled"
        else:
            return Response("unknown action", status=400)
        if back:
            return redirect(back, code=303)
        return render_template_string(
            _DONE, title=outcome, trade=trade, yuan=_yuan(trade["amount"])
        )

    @bp.get("/jsapi")
    def jsapi() -> BaseResponse:
        """What WeixinJSBridge getBrandWCPayRequest does: check paySign, open the cashier."""
        params = {k: request.args.get(k, "") for k in _JSAPI_FIELDS}
        package = params["package"]
        trade = trade_by_prepay_id(package.removeprefix("prepay_id="))
        sign_type = params["signType"]
        if (
            trade is None
            or not package.startswith("prepay_id=")
            or params["appId"] != config.appid
            or sign_type != trade["extra"]["sign_type"]  # WeChat: same type as the order
            or not hmac.compare_digest(
                request.args.get("paySign", "").encode("utf-8", "replace"),
                wechat_sign(params, api_key, sign_type).encode(),
            )
        ):
            return Response("get_brand_wcpay_request:fail 支付验证签名失败", status=400)
        return redirect(
            url_for(".cashier", prepay_id=trade["extra"]["prepay_id"]),
            code=303,
        )

    # -- sandbox-only test hook ----------------------------------------------------------
    @bp.post("/_test/pay")
    def test_pay() -> Response:
        """SANDBOX ONLY: pay ``order_no`` now (any state) and queue its notify.

        ``amount`` (fen) overrides the notified total_fee, to provoke conflicts.
        """
        payload = request.get_json(silent=True) or {}
        order_no = payload.get("order_no")
        amount = payload.get("amount")
        if not isinstance(order_no, str) or (
            amount is not None and (not isinstance(amount, int) or isinstance(amount, bool))
        ):
            return _json({"error": "order_no (str) and optional amount (int fen)"}, 400)
        trade = store.trade(PROVIDER, order_no)
        if trade is None:
            return _json({"error": "unknown order"}, 404)
        store.set_status(PROVIDER, order_no, "paid", only_from=("pending", "closed"))
        notify_id = pay(trade, amount)
        return _json(
            {
                "order_no": order_no,
                "transaction_id": trade["trade_no"],
                "amount": trade["amount"] if amount is None else amount,
                "notify_id": notify_id,
            },
            200,
        )

    return bp


def jsapi_cashier_url(sandbox_url: str, jsapi_params: dict[str, str]) -> str:
    """Development stand-in for WeixinJSBridge: the sandbox page that checks the params."""
    fields = {k: jsapi_params[k] for k in (*_JSAPI_FIELDS, "paySign")}
    return f"{sandbox_url.rstrip('/')}/jsapi?{urlencode(fields)}"


_JSAPI_FIELDS: Final = ("appId", "timeStamp", "nonceStr", "package", "signType")


def _bill(
    store: SandboxStore, config: WechatV2SandboxConfig, day: dt.date, bill_type: str
) -> str | None:
    """The day's bill in WeChat's v2 text format, or None when there is nothing to list."""
    lines: list[list[str]] = []
    fees = Decimal(0)
    paid_total = refund_total = 0
    ours = [
        t
        for t in store.trades_on(PROVIDER, day)
        if t["app_id"] == config.appid and t["merchant_id"] == config.mch_id
    ]
    if bill_type in {"ALL", "SUCCESS"}:
        for trade in ours:
            fee = (Decimal(trade["amount"]) * _FEE_RATE).quantize(Decimal(1), ROUND_HALF_UP)
            fees += fee
            paid_total += trade["amount"]
            lines.append(_bill_row(config, trade, _parse_iso(trade["paid_at"]), "SUCCESS", fee))
    if bill_type in {"ALL", "REFUND"}:
        for item in store.refunds_on(PROVIDER, day):
            refunded = store.trade(PROVIDER, item["order_no"])
            if refunded is None or refunded["merchant_id"] != config.mch_id:
                continue
            refund_total += item["amount"]
            lines.append(
                _bill_row(
                    config,
                    refunded,
                    _parse_iso(item["created_at"]),
                    "REFUND",
                    Decimal(0),
                    refund=item,
                )
            )
    if not lines:
        return None
    out = [BILL_HEADER]
    out += ["`" + ",`".join(row) for row in lines]
    out.append(BILL_SUMMARY_HEADER)
    summary = [
        str(len(lines)),
        _yuan(paid_total),
        _yuan(refund_total),
        "0.00",
        _yuan(int(fees)),
        _yuan(paid_total),
        _yuan(refund_total),
    ]
    out.append("`" + ",`".join(summary))
    return "\r\n".join(out) + "\r\n"


def _bill_row(
    config: WechatV2SandboxConfig,
    trade: dict[str, Any],
    at: dt.datetime,
    state: str,
    fee: Decimal,
    refund: dict[str, Any] | None = None,
) -> list[str]:
    amount = _yuan(trade["amount"])
    refunded = _yuan(refund["amount"]) if refund else "0.00"
    subject = " ".join(trade["subject"].replace("`", "'").split())
    return [
        at.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S"),
        config.appid,
        config.mch_id,
        "0",
        "",
        trade["trade_no"],
        trade["order_no"],
        trade["extra"].get("openid") or SANDBOX_OPENID,
        trade["extra"]["trade_type"],
        state,
        "OTHERS",
        "CNY",
        amount if refund is None else "0.00",
        "0.00",
        _refund_id(config.mch_id, refund["refund_no"]) if refund else "0",
        refund["refund_no"] if refund else "0",
        refunded,
        "0.00",
        "ORIGINAL" if refund else "",
        "SUCCESS" if refund else "",
        subject,
        "",
        _yuan(int(fee)),
        "0.60%",
        amount if refund is None else "0.00",
        refunded,
        "",
    ]


def _refund(store: SandboxStore, refund_no: str) -> dict[str, Any] | None:
    with store.connect() as conn:
        row = conn.execute(
            "SELECT * FROM refund WHERE provider = ? AND refund_no = ?", (PROVIDER, refund_no)
        ).fetchone()
    return dict(row) if row is not None else None


def _refund_id(mch_id: str, refund_no: str) -> str:
    """WeChat's refund id for our refund number, stable without a column to keep it in."""
    digest = hashlib.sha256(f"{mch_id}:{refund_no}".encode()).hexdigest()
    return "50" + str(int(digest[:24], 16)).zfill(30)[:27]


def _yuan(fen: int) -> str:
    """Fen as the bill's and cashier's yuan text, exactly (integer arithmetic)."""
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"


def _expired(trade: dict[str, Any]) -> bool:
    expire = trade["extra"].get("time_expire", "")
    if not expire:
        return False
    try:
        at = dt.datetime.strptime(expire, "%Y%m%d%H%M%S").replace(tzinfo=CHINA)
    except ValueError:
        return False
    return _utcnow() > at


def _safe_redirect(url: str) -> str:
    """Only http(s) URLs go back to the merchant (WeChat checks the registered domain)."""
    return url if urlsplit(url).scheme in {"http", "https"} else ""


def _parse_iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json(payload: dict[str, Any], status: int) -> Response:
    return Response(json.dumps(payload), status=status, content_type="application/json")


_STYLE = """
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;max-width:28rem;margin:1rem auto;padding:0 1rem}
 .amount{font-size:2.2rem;font-weight:600;margin:.5rem 0}
 button{width:100%;padding:.9rem;font-size:1.1rem;margin:.4rem 0;border-radius:.4rem;border:0}
 .pay{background:#07c160;color:#fff}.cancel{background:#eee}
 .note{color:#888;font-size:.85rem}
</style>
"""

_PAGE = (
    """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>{{ title }}</title>"""
    + _STYLE
    + """</head><body>
<h1>{{ title }}</h1>
{% if trade %}
<p>{{ trade.subject }}</p>
<p class="amount">¥{{ yuan }}</p>
<p>商户订单号 Order: {{ trade.order_no }}<br>商户号 Merchant: {{ trade.merchant_id }}</p>
{% if trade.status == "pending" and not expired %}
<form method="post">
 <input type="hidden" name="prepay_id" value="{{ prepay_id }}">
 <input type="hidden" name="redirect_url" value="{{ redirect_url }}">
 <button class="pay" name="action" value="pay">支付 Pay</button>
 <button class="cancel" name="action" value="cancel">取消 Cancel</button>
</form>
{% elif expired and trade.status == "pending" %}<p>订单已过期 Order expired</p>
{% elif trade.status == "paid" %}<p>订单已支付 Already paid</p>
{% else %}<p>订单已关闭 Order closed</p>{% endif %}
{% endif %}
<p class="note">沙箱环境，不会扣款 Sandbox: no real money moves.</p>
</body></html>"""
)

_DONE = (
    """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>{{ title }}</title>"""
    + _STYLE
    + """</head><body>
<h1>{{ title }}</h1>
<p>{{ trade.subject }}</p><p class="amount">¥{{ yuan }}</p>
<p>商户订单号 Order: {{ trade.order_no }}</p>
<p class="note">沙箱环境，不会扣款 Sandbox: no real money moves.</p>
</body></html>"""
)

__all__ = [
    "PROVIDER",
    "SCHEDULE",
    "SandboxKeys",
    "WechatV2SandboxConfig",
    "accepted",
    "create_blueprint",
    "ensure_sandbox_keys",
    "jsapi_cashier_url",
    "wechat_sign",
]
