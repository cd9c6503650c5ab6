from __future__ import annotations

import pytest

from models.errors import InvalidTransition
from models.orders import Credit, Order
from models.states import (
    CARD_TRANSITIONS,
    CREDIT_TRANSITIONS,
    ORDER_TRANSITIONS,
    CardState,
    CreditState,
    OrderState,
)


def test_every_state_has_a_row() -> None:
    assert set(ORDER_TRANSITIONS) == set(OrderState)
    assert set(CREDIT_TRANSITIONS) == set(CreditState)
    assert set(CARD_TRANSITIONS) == set(CardState)


def test_order_paid_once() -> None:
    order = Order(state=OrderState.paying.value)
    order.transition_to(OrderState.paid)
    assert order.state == "paid"
    with pytest.raises(InvalidTransition) as raised:
        order.transition_to(OrderState.paid)
    assert raised.value.detail == {"current": "paid", "requested": "paid"}
    assert order.state == "paid"


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (OrderState.closed, OrderState.paid),  # a notify for a closed order is a conflict
        (OrderState.paid, OrderState.closed),  # a late failure never undoes a success
        (OrderState.refunded, OrderState.paid),
        (OrderState.created, OrderState.refunded),
    ],
)
def test_order_refuses_impossible_moves(start: OrderState, target: OrderState) -> None:
    order = Order(state=start.value)
    with pytest.raises(InvalidTransition):
        order.transition_to(target)
    assert order.state == start.value


def test_credit_refund_only_before_loading() -> None:
    credit = Credit(state=CreditState.awaiting_load.value)
    credit.transition_to(CreditState.loaded)
    with pytest.raises(InvalidTransition):
        credit.transition_to(CreditState.refunded)
    credit.transition_to(CreditState.applied)
    assert credit.state == "applied"
