"""``ranqi demo-cards DIR``: what the virtual kiosk demo needs to stand in for cards and meters.

For each active card of the demo accounts (``models.demo``) it writes the issued card
image signed with the server's card key, the card's NTAG password, and the meter's
report key, into ``DIR/demo-cards.json`` (mode 0600). The demo's meter simulators
stand in for real meters, so they hold meter report keys; the kiosk itself never
holds one, and nothing here can sign a purchase (only the public keys are written).

Run it as ``ranqi demo-cards DIR`` once the lead has registered it, or as
``python -m portal.cli_demo_cards DIR`` in the meantime.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import serialization
from flask.cli import with_appcontext
from sqlalchemy import select

import cardfmt
from models.accounts import Account, Card, Meter
from models.base import utcnow
from models.cardwrites import CardKeys
from models.demo import DEMO_ACCOUNTS
from models.states import CardState
from portal import db
from portal.card_keys import card_keys

FILE_NAME = "demo-cards.json"


def issued_image(card: Card, keys: CardKeys) -> bytes:
    """The image the card would carry if issued now (N and pending as the server records them)."""
    header = cardfmt.Header(
        card_no=card.card_no,
        meter_no=card.meter.meter_no,
        key_version=keys.signing_version,
        replacement_count=card.replacement_count,
    )
    image = cardfmt.issue_card(
        header,
        issued_at=utcnow(),
        signing_key=keys.signing_key,
        key_version=keys.signing_version,
        purchase_count=card.purchase_count,
        pending_volume=card.pending_volume,
    )
    return cardfmt.encode(image)


def demo_cards(keys: CardKeys) -> dict[str, Any]:
    """The demo's cards and meters as JSON: images, tag passwords, meter keys, public keys."""
    numbers = [row[0] for row in DEMO_ACCOUNTS]
    cards = db.session().scalars(
        select(Card)
        .join(Meter, Card.meter_id == Meter.id)
        .join(Account, Meter.account_id == Account.id)
        .where(Account.account_no.in_(numbers), Card.state == CardState.active.value)
        .order_by(Account.account_no, Meter.meter_no)
    )
    rows = []
    for card in cards:
        meter = card.meter
        rows.append(
            {
                "account_no": meter.account.account_no,
                "meter_no": meter.meter_no,
                "card_no": card.card_no,
                "tag_uid": card.tag_uid,
                "capacity": meter.capacity,
                "image": base64.b64encode(issued_image(card, keys)).decode(),
                "tag_password": keys.tag_password(card.card_no, keys.signing_version).hex(),
                "meter_key": keys.meter_key(meter.meter_no).hex(),
            }
        )
    public_keys = {
        str(version): key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ).hex()
        for version, key in keys.public_keys.items()
    }
    return {"public_keys": public_keys, "cards": rows}


@click.command("demo-cards")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@with_appcontext
def demo_cards_command(directory: Path) -> None:
    """Write DIR/demo-cards.json: the virtual demo's card images, tag passwords, meter keys."""
    data = demo_cards(card_keys())
    if not data["cards"]:
        raise click.ClickException("no demo cards: run `ranqi demo` first")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE_NAME
    temporary = path.with_name(path.name + ".tmp")
    # 0600 from the start: tag passwords and meter keys are secrets, even in a demo
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=1)
    os.replace(temporary, path)
    click.echo(f"{len(data['cards'])} demo cards written to {path}")


if __name__ == "__main__":  # pragma: no cover - until the lead registers the command
    from portal import create_app

    with create_app().app_context():
        demo_cards_command.main(standalone_mode=True)
