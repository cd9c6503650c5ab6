"""Payment callbacks: /payments/alipay/notify, /payments/wechat/notify, /payments/wechat-v2/notify.

The provider's server-to-server notify is the only proof of payment. The raw body is
verified by the provider adapter; the raw event is stored whether or not it verifies;
a verified one is applied exactly once under a row lock (models.ordering). When the
database fails, the answer is non-success so that the provider retries, and nothing is
half-written (one transaction per notify).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, abort, current_app, request
from sqlalchemy.exc import SQLAlchemyError

from models.base import utcnow
from models.ordering import NoticeStatus, Outcome, PaymentNotice, apply_notice, record_event
from payments.base import NotifyAnswer, NotifyRejected, NotifyRequest, Provider, TradeStatus
from portal import db

log = logging.getLogger(__name__)

bp = Blueprint("callbacks", __name__, url_prefix="/payments")

#: URL segment → provider name
PROVIDER_PATHS = {"alipay": "alipay", "wechat": "wechat", "wechat-v2": "wechat_v2"}

NOTICE_STATUS = {
    TradeStatus.paid: NoticeStatus.paid,
    TradeStatus.closed: NoticeStatus.closed,
    TradeStatus.failed: NoticeStatus.failed,
}


def providers() -> dict[str, Provider]:
    """The configured providers by name (registered by create_app or by tests)."""
    registry: dict[str, Provider] = current_app.extensions.setdefault("ranqi_providers", {})
    return registry


def _response(answer: NotifyAnswer) -> Response:
    return Response(answer.body, status=answer.status, content_type=answer.content_type)


@bp.post("/<path>/notify")
def notify(path: str) -> Response:
    """Verify, store and apply one provider notify; answer what the provider expects."""
    name = PROVIDER_PATHS.get(path)
    provider = providers().get(name or "")
    if provider is None:
        abort(404)
    raw = request.get_data(cache=False)
    headers = {key.lower(): value for key, value in request.headers.items()}
    session = db.session()
    try:
        notification = provider.parse_notify(NotifyRequest(body=raw, headers=headers), now=utcnow())
    except Exception as error:  # an adapter bug must not lose the raw event, nor answer 500
        rejected = (
            error
            if isinstance(error, NotifyRejected)
            else NotifyRejected(f"adapter error: {type(error).__name__}: {error}"[:500])
        )
        if not isinstance(error, NotifyRejected):
            log.exception("%s adapter failed on a notify; stored as rejected", provider.name)
        log.warning("rejected %s notify: %s", provider.name, rejected.reason)
        try:
            record_event(
                session,
                provider=provider.name,
                kind="notify",
                body=raw,
                headers=headers,
                verified=False,
                outcome="rejected",
                detail=rejected.reason,
            )
            session.commit()
        except SQLAlchemyError:
            session.rollback()
            log.exception("could not store a rejected %s notify", provider.name)
        return _response(provider.notify_answer(False))

    status = NOTICE_STATUS.get(notification.status)
    try:
        event = record_event(
            session,
            provider=provider.name,
            kind="notify",
            body=raw,
            headers=headers,
            verified=True,
            order_no=notification.order_no,
        )
        if status is None:  # pending, refunded, unknown: nothing to do, kept for the record
            event.outcome = Outcome.ignored.value
        else:
            apply_notice(
                session,
                PaymentNotice(
                    provider=provider.name,
                    order_no=notification.order_no,
                    provider_trade_no=notification.provider_trade_no,
                    status=status,
                    amount=notification.amount,
                    paid_at=notification.paid_at,
                ),
                event=event,
            )
        session.commit()
    except SQLAlchemyError:
        session.rollback()
        log.exception(
            "%s notify for %s not applied; asking the provider to retry",
            provider.name,
            notification.order_no,
        )
        return _response(provider.notify_answer(False))
    return _response(provider.notify_answer(True))
