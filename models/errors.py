"""Domain errors: each carries a stable code for the API and a message for people."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A request the domain refuses; nothing was changed."""

    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.detail = detail


class NotFound(DomainError):
    code = "not_found"


class QuoteError(DomainError):
    code = "quote_refused"


class InvalidTransition(DomainError):
    """A state change that the entity's transition table does not allow."""

    code = "invalid_transition"


class LedgerError(DomainError):
    code = "ledger_unbalanced"
