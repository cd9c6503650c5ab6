"""The OpenAPI 3.1 document of /api/v1/, kept as data that each new endpoint extends.

Add an endpoint by adding its path to ``DOCUMENT["paths"]`` and its schemas to
``DOCUMENT["components"]["schemas"]``; tests check every route is documented.
"""

from __future__ import annotations

import copy
from typing import Any

VOLUME_UNIT = "Gas volume in hundredths of a cubic metre (0.01 m³): 12345 means 123.45 m³."
AMOUNT_UNIT = "Money in fen (0.01 yuan): 12345 means 123.45 yuan."

#: account and meter numbers: 1 to 32 characters, none a control character
NUMBER_PATTERN = r"^[^\x00-\x1f\x7f]{1,32}$"

_ERROR_RESPONSE = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Ranqi API",
        "version": "1",
        "description": (
            "Prepaid gas for residents: quotes (and later orders and order status). "
            f"{VOLUME_UNIT} {AMOUNT_UNIT} Prices are decimal strings in yuan per m³. "
            "Times are ISO 8601 in UTC; dates are local (Asia/Shanghai) calendar dates."
        ),
    },
    "paths": {
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/api/v1/quotes": {
            "post": {
                "operationId": "createQuote",
                "summary": "Quote a purchase of gas by volume or by amount",
                "description": (
                    "Prices a purchase for one meter under the tariff in force now: tiers "
                    "(阶梯) counted over the household's purchases this cycle on all its "
                    "meters, the tariff's minimum and maximum purchase, the meter's room and "
                    "the account's discounts. By amount, the quote is the largest volume "
                    "whose cost is within the amount and charges exactly that cost. "
                    "A quote changes nothing and reserves nothing."
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/QuoteRequest"}
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The quote",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Quote"}}
                        },
                    },
                    "400": {
                        "description": (
                            "Malformed request (code `malformed`), or an account with several "
                            "meters and no `meter_no` (code `meter_required`)"
                        ),
                        "content": _ERROR_RESPONSE,
                    },
                    "404": {
                        "description": (
                            "Unknown account (`account_not_found`) or meter (`meter_not_found`)"
                        ),
                        "content": _ERROR_RESPONSE,
                    },
                    "422": {
                        "description": (
                            "Quote refused. Codes: `below_minimum`, `above_maximum`, "
                            "`over_capacity`, `amount_too_small` (the amount cannot buy the "
                            "minimum purchase), `amount_too_large` (more than the largest "
                            "allowed purchase costs; `detail` gives `largest_volume` and "
                            "`largest_amount`), `no_tariff`, `tariff_invalid`, `meter_inactive`"
                        ),
                        "content": _ERROR_RESPONSE,
                    },
                },
            }
        },
    },
    "components": {
        "schemas": {
            "QuoteRequest": {
                "type": "object",
                "description": "Exactly one of `volume` and `amount`.",
                "properties": {
                    "account_no": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 32,
                        "pattern": NUMBER_PATTERN,
                        "description": "The account number (户号)",
                    },
                    "meter_no": {
                        "type": ["string", "null"],
                        "minLength": 1,
                        "maxLength": 32,
                        "pattern": NUMBER_PATTERN,
                        "description": "The meter; may be left out if the account has one meter",
                    },
                    "volume": {
                        "type": "integer",
                        "minimum": 1,
                        "description": f"Volume to buy. {VOLUME_UNIT}",
                    },
                    "amount": {
                        "type": "integer",
                        "minimum": 1,
                        "description": f"Amount to spend. {AMOUNT_UNIT}",
                    },
                },
                "required": ["account_no"],
                "oneOf": [{"required": ["volume"]}, {"required": ["amount"]}],
                "additionalProperties": False,
            },
            "QuotePart": {
                "type": "object",
                "description": "The slice of a purchase in one tier, one side of a free allowance",
                "properties": {
                    "tier": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Tier position, 1 first",
                    },
                    "volume": {"type": "integer", "minimum": 1, "description": VOLUME_UNIT},
                    "price": {
                        "type": "string",
                        "pattern": r"^[0-9]+\.[0-9]{2,4}$",
                        "description": "Yuan per m³ as listed by the tariff, before discounts",
                    },
                    "amount": {
                        "type": "integer",
                        "minimum": 0,
                        "description": f"Charged for this part, after discounts. {AMOUNT_UNIT}",
                    },
                    "free": {"type": "boolean", "description": "Inside a free allowance"},
                },
                "required": ["tier", "volume", "price", "amount", "free"],
                "additionalProperties": False,
            },
            "Quote": {
                "type": "object",
                "properties": {
                    "account_no": {"type": "string"},
                    "meter_no": {"type": "string"},
                    "tariff_code": {"type": "string", "description": "The tariff applied"},
                    "volume": {
                        "type": "integer",
                        "minimum": 1,
                        "description": f"Total volume, the sum of the parts'. {VOLUME_UNIT}",
                    },
                    "amount": {
                        "type": "integer",
                        "minimum": 0,
                        "description": f"Total to pay, the sum of the parts'. {AMOUNT_UNIT}",
                    },
                    "parts": {"type": "array", "items": {"$ref": "#/components/schemas/QuotePart"}},
                    "cycle_start": {
                        "type": "string",
                        "format": "date",
                        "description": "First local day of the yearly tier cycle",
                    },
                    "cycle_volume_before": {
                        "type": "integer",
                        "minimum": 0,
                        "description": (
                            "The household's purchases this cycle before this one, all meters. "
                            + VOLUME_UNIT
                        ),
                    },
                    "discounts": {
                        "type": "array",
                        "items": {
                            "type": "string",
                            "enum": ["percentage", "free_allowance", "tier_extension"],
                        },
                        "description": "Kinds of discount applied to this purchase",
                    },
                    "quoted_at": {"type": "string", "format": "date-time"},
                },
                "required": [
                    "account_no",
                    "meter_no",
                    "tariff_code",
                    "volume",
                    "amount",
                    "parts",
                    "cycle_start",
                    "cycle_volume_before",
                    "discounts",
                    "quoted_at",
                ],
                "additionalProperties": False,
            },
            "Error": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "code": {
                                "type": "string",
                                "description": "Stable; clients translate by it",
                            },
                            "message": {"type": "string", "description": "In English"},
                            "detail": {
                                "type": "object",
                                "description": "Figures behind the refusal, when there are any",
                            },
                        },
                        "required": ["code", "message"],
                        "additionalProperties": False,
                    }
                },
                "required": ["error"],
                "additionalProperties": False,
            },
        }
    },
}


def extend(
    *,
    paths: dict[str, Any],
    schemas: dict[str, Any] | None = None,
    security_schemes: dict[str, Any] | None = None,
) -> None:
    """Add another module's path items and components (orders, kiosk API) to the document.

    Adding the same thing again is harmless (apps are made more than once in tests);
    a path or component name already used for something else is an error.
    """
    components = DOCUMENT["components"]
    targets = [
        (DOCUMENT["paths"], paths),
        (components["schemas"], schemas or {}),
        (components.setdefault("securitySchemes", {}), security_schemes or {}),
    ]
    for target, additions in targets:
        for name, value in additions.items():
            if name in target and target[name] != value:
                raise ValueError(f"OpenAPI: {name} is documented already, differently")
    for target, additions in targets:
        target.update(copy.deepcopy(additions))
    if not components["securitySchemes"]:
        del components["securitySchemes"]


def document() -> dict[str, Any]:
    """A copy of the document to serve (callers may not change the shared one by accident)."""
    return copy.deepcopy(DOCUMENT)
