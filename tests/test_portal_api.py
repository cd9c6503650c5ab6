"""The JSON API: POST /api/v1/quotes and the OpenAPI document that describes it."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import demo
from models.orders import Credit, Order
from models.quotes import find_meter
from portal import openapi as openapi_module

QUOTES = "/api/v1/quotes"


@pytest.fixture
def demo_db(db: Session) -> Session:
    demo.load(db)
    return db


def post(client: FlaskClient, body: Any) -> tuple[int, Any]:
    response = client.post(QUOTES, json=body)
    assert response.is_json
    return response.status_code, response.get_json()


# --- quotes -------------------------------------------------------------------------------


def test_quote_by_volume(client: FlaskClient, demo_db: Session) -> None:
    status, body = post(client, {"account_no": "10000001", "volume": 10000})
    assert status == 200
    assert body["meter_no"] == "M100000011"
    assert (body["volume"], body["amount"], body["cycle_volume_before"]) == (10000, 27200, 30000)
    assert body["parts"] == [
        {"tier": 1, "volume": 5000, "price": "2.61", "amount": 13050, "free": False},
        {"tier": 2, "volume": 5000, "price": "2.83", "amount": 14150, "free": False},
    ]
    assert body["tariff_code"] == "DEMO-RES-2026"
    assert body["discounts"] == []


def test_quote_by_amount_charges_what_the_volume_costs(
    client: FlaskClient, demo_db: Session
) -> None:
    status, body = post(client, {"account_no": "10000005", "amount": 10000})
    assert status == 200
    assert (body["volume"], body["amount"]) == (3831, 9999)


def test_quote_names_the_meter_when_there_are_several(
    client: FlaskClient, demo_db: Session
) -> None:
    status, body = post(client, {"account_no": "10000002", "volume": 2000})
    assert status == 400
    assert body["error"]["code"] == "meter_required"
    status, body = post(
        client, {"account_no": "10000002", "meter_no": "M100000022", "volume": 2000}
    )
    assert status == 200
    assert (body["meter_no"], body["amount"]) == ("M100000022", 5440)


@pytest.mark.parametrize(
    ("request_body", "code"),
    [
        ({"account_no": "99999999", "volume": 1000}, "account_not_found"),
        ({"account_no": "10000001", "meter_no": "M100000021", "volume": 1000}, "meter_not_found"),
    ],
)
def test_unknown_account_or_meter_is_404(
    client: FlaskClient, demo_db: Session, request_body: dict[str, Any], code: str
) -> None:
    status, body = post(client, request_body)
    assert status == 404
    assert body["error"]["code"] == code


@pytest.mark.parametrize(
    ("request_body", "code"),
    [
        ({"account_no": "10000005", "volume": 99}, "below_minimum"),
        ({"account_no": "10000005", "volume": 30001}, "above_maximum"),
        ({"account_no": "10000005", "amount": 260}, "amount_too_small"),
        ({"account_no": "10000005", "amount": 10**30}, "amount_too_large"),
        ({"account_no": "10000005", "volume": 10**30}, "above_maximum"),
    ],
)
def test_refused_quote_is_422_with_its_code(
    client: FlaskClient, demo_db: Session, request_body: dict[str, Any], code: str
) -> None:
    status, body = post(client, request_body)
    assert status == 422
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_amount_too_large_says_the_largest_purchase(client: FlaskClient, demo_db: Session) -> None:
    status, body = post(client, {"account_no": "10000005", "amount": 100000})
    assert status == 422
    assert body["error"]["detail"] == {"largest_volume": 30000, "largest_amount": 78300}
    assert "300.00 m³ for 783.00 yuan" in body["error"]["message"]


def test_inactive_meter_is_422(client: FlaskClient, demo_db: Session) -> None:
    find_meter(demo_db, "10000005", None).status = "removed"
    demo_db.flush()
    status, body = post(client, {"account_no": "10000005", "volume": 1000})
    assert (status, body["error"]["code"]) == (422, "meter_inactive")


MALFORMED: list[Any] = [
    [],
    "10000001",
    None,
    {},
    {"volume": 1000},
    {"account_no": "10000001"},
    {"account_no": "10000001", "volume": 1000, "amount": 1000},
    {"account_no": "10000001", "volume": 1000, "colour": "blue"},
    {"account_no": "10000001", "volume": "1000"},
    {"account_no": "10000001", "volume": 1000.0},
    {"account_no": "10000001", "volume": 10.5},
    {"account_no": "10000001", "volume": True},
    {"account_no": "10000001", "amount": False},
    {"account_no": "10000001", "volume": -100},
    {"account_no": "10000001", "volume": 0},
    {"account_no": "10000001", "amount": -1},
    {"account_no": "10000001", "volume": None},
    {"account_no": "10000001", "volume": [1000]},
    {"account_no": 10000001, "volume": 1000},
    {"account_no": "", "volume": 1000},
    {"account_no": "1" * 33, "volume": 1000},
    {"account_no": "10000001\x00", "volume": 1000},
    {"account_no": "10000001", "meter_no": 5, "volume": 1000},
    {"account_no": "10000001", "meter_no": "", "volume": 1000},
]


@pytest.mark.parametrize("request_body", MALFORMED)
def test_malformed_json_is_400(client: FlaskClient, demo_db: Session, request_body: Any) -> None:
    status, body = post(client, request_body)
    assert status == 400
    assert body["error"]["code"] == "malformed"
    assert body["error"]["message"]


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ('{"account_no": "10000001", "volume": 1000}', "text/plain"),
        ('{"account_no": "10000001", "volume": ', "application/json"),
        (b"\xff\xfe{", "application/json"),
        ("[" * 100000 + "]" * 100000, "application/json"),
        ('{"account_no": "10000001", "volume": NaN}', "application/json"),
        ('{"account_no": "10000001", "volume": 1e400}', "application/json"),
        ("", "application/json"),
    ],
)
def test_unreadable_bodies_are_400(
    client: FlaskClient, demo_db: Session, data: str | bytes, content_type: str
) -> None:
    response = client.post(QUOTES, data=data, content_type=content_type)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "malformed"


def test_a_quote_stores_nothing(client: FlaskClient, demo_db: Session) -> None:
    for _ in range(2):
        status, body = post(client, {"account_no": "10000001", "volume": 10000})
        assert status == 200
        assert body["cycle_volume_before"] == 30000
    assert demo_db.scalar(select(func.count()).select_from(Order)) == 0
    assert demo_db.scalar(select(func.count()).select_from(Credit)) == 0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(["10000001", "10000002", "10000004", "M100000011", "M100000021"]),
    st.integers(-5, 100000),
)
bodies = st.one_of(
    json_values,
    st.dictionaries(
        st.sampled_from(["account_no", "meter_no", "volume", "amount", "extra"]),
        field_values,
        max_size=5,
    ),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_no_body_makes_the_api_fail(client: FlaskClient, demo_db: Session, body: Any) -> None:
    """Whatever JSON arrives, the answer is a quote or a JSON error, never a 500."""
    response = client.post(QUOTES, json=body)
    assert response.status_code in {200, 400, 404, 422}
    payload = response.get_json()
    if response.status_code == 200:
        assert payload["amount"] == sum(part["amount"] for part in payload["parts"])
        if isinstance(body, dict) and isinstance(body.get("amount"), int):
            assert payload["amount"] <= body["amount"]
    else:
        assert set(payload["error"]) >= {"code", "message"}


# --- the OpenAPI document ---------------------------------------------------------------


def check(schema: dict[str, Any], value: Any, root: dict[str, Any], where: str = "$") -> None:
    """Validate ``value`` against the subset of JSON Schema the document uses."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        check(root["components"]["schemas"][name], value, root, where)
        return
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        python = {
            "object": dict,
            "array": list,
            "string": str,
            "boolean": bool,
            "null": type(None),
        }

        def fits(kind: str) -> bool:
            if kind == "integer":
                return isinstance(value, int) and not isinstance(value, bool)
            return isinstance(value, python[kind])

        assert any(fits(kind) for kind in kinds), f"{where}: {value!r} is not {kinds}"
    if isinstance(value, str):
        assert len(value) >= schema.get("minLength", 0), where
        assert len(value) <= schema.get("maxLength", len(value)), where
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), f"{where}: {value!r}"
        if "enum" in schema:
            assert value in schema["enum"], where
    if isinstance(value, int) and not isinstance(value, bool) and "minimum" in schema:
        assert value >= schema["minimum"], f"{where}: {value} < {schema['minimum']}"
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            assert name in value, f"{where}: {name} missing"
        if schema.get("additionalProperties") is False:
            extra = set(value) - set(properties)
            assert not extra, f"{where}: undocumented {extra}"
        for name, item in value.items():
            if name in properties:
                check(properties[name], item, root, f"{where}.{name}")
        if "oneOf" in schema:
            matches = 0
            for option in schema["oneOf"]:
                try:
                    check(option, value, root, where)
                except AssertionError:
                    continue
                matches += 1
            assert matches == 1, f"{where}: matches {matches} of oneOf"
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            check(schema["items"], item, root, f"{where}[{index}]")


def openapi(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.get_json()
    return document


def test_every_api_route_is_documented(app: Flask, client: FlaskClient) -> None:
    document = openapi(client)
    assert document["openapi"] == "3.1.0"
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(("/api/", "/kiosk/api/")):
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
            for method in rule.methods or ():
                if method not in {"HEAD", "OPTIONS"}:
                    routes.add((path, method.lower()))
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert routes == documented
    assert ("/api/v1/quotes", "post") in routes
    assert ("/api/v1/orders", "post") in routes
    assert ("/kiosk/api/v1/sync", "post") in routes


def test_every_reference_resolves_and_every_operation_answers(client: FlaskClient) -> None:
    document = openapi(client)
    schemas = document["components"]["schemas"]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                assert node["$ref"].removeprefix("#/components/schemas/") in schemas
            for item in node.values():
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    for item in document["paths"].values():
        for operation in item.values():
            assert operation["operationId"]
            assert operation["responses"]


def test_units_are_stated(client: FlaskClient) -> None:
    schemas = openapi(client)["components"]["schemas"]
    assert "0.01 m³" in schemas["QuoteRequest"]["properties"]["volume"]["description"]
    assert "fen" in schemas["QuoteRequest"]["properties"]["amount"]["description"]
    assert "0.01 m³" in schemas["Quote"]["properties"]["volume"]["description"]
    assert "fen" in schemas["Quote"]["properties"]["amount"]["description"]
    assert "yuan per m³" in schemas["QuotePart"]["properties"]["price"]["description"].lower()


def test_real_responses_match_their_schemas(client: FlaskClient, demo_db: Session) -> None:
    document = openapi(client)
    responses = document["paths"]["/api/v1/quotes"]["post"]["responses"]
    schemas = document["components"]["schemas"]
    asks: list[dict[str, Any]] = [
        {"account_no": "10000001", "volume": 10000},
        {"account_no": "10000004", "amount": 20000},
        {"account_no": "10000002", "meter_no": "M100000021", "volume": 3000},
    ]
    for ask in asks:
        status, body = post(client, ask)
        assert status == 200
        check(responses["200"]["content"]["application/json"]["schema"], body, document)
        assert set(body) == set(schemas["Quote"]["properties"])
        for part in body["parts"]:
            assert set(part) == set(schemas["QuotePart"]["properties"])
    failures: list[tuple[Any, int]] = [
        ({"account_no": "10000002", "volume": 3000}, 400),
        ({"volume": 3000}, 400),
        ({"account_no": "00000000", "volume": 3000}, 404),
        ({"account_no": "10000001", "amount": 10**9}, 422),
        ({"account_no": "10000001", "volume": 1}, 422),
    ]
    for ask, expected in failures:
        status, body = post(client, ask)
        assert status == expected
        check(responses[str(status)]["content"]["application/json"]["schema"], body, document)


@pytest.mark.parametrize(
    "request_body",
    [
        {"account_no": "10000001", "volume": 10000},
        {"account_no": "10000001", "amount": 10000},
        {"account_no": "10000001", "meter_no": "M100000011", "volume": 10000},
        {"account_no": "10000001", "meter_no": None, "amount": 10000},
        *MALFORMED,
    ],
)
def test_the_request_schema_agrees_with_the_api(
    client: FlaskClient, demo_db: Session, request_body: Any
) -> None:
    """What the schema accepts the API reads (200), and what it refuses the API answers 400."""
    document = openapi(client)
    schema = document["components"]["schemas"]["QuoteRequest"]
    try:
        check(schema, request_body, document)
        valid = True
    except AssertionError:
        valid = False
    status, _ = post(client, request_body)
    assert (status != 400) == valid
    if valid:
        assert status == 200


def test_extend_adds_fragments_once_and_refuses_clashes(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openapi_module, "DOCUMENT", copy.deepcopy(openapi_module.DOCUMENT))
    item = {"get": {"operationId": "getThing", "responses": {"200": {"description": "ok"}}}}
    thing = {"type": "object"}
    scheme = {"type": "oauth2", "flows": {}}
    for _ in range(2):  # a second app adds the same again
        openapi_module.extend(
            paths={"/api/v1/things": item},
            schemas={"Thing": thing},
            security_schemes={"thing_auth": scheme},
        )
    document = openapi(client)
    assert document["paths"]["/api/v1/things"] == item
    assert document["components"]["schemas"]["Thing"] == thing
    assert document["components"]["securitySchemes"]["thing_auth"] == scheme
    assert "/api/v1/quotes" in document["paths"]
    with pytest.raises(ValueError, match="Quote"):
        openapi_module.extend(paths={}, schemas={"Quote": {"type": "string"}})
    with pytest.raises(ValueError, match="/api/v1/things"):
        openapi_module.extend(paths={"/api/v1/things": {}})
    assert openapi(client)["components"]["schemas"]["Quote"]["type"] == "object"
