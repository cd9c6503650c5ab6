"""The server's card keys, loaded from files named in the configuration.

* ``CARD_SIGNING_KEY_FILES``: Ed25519 private keys (PKCS#8 PEM, unencrypted) by key
  version, as ``"1=/path/one.pem,2=/path/two.pem"`` (or a dict ``{1: path}``). Old
  versions stay listed so that cards signed with them still verify.
* ``CARD_SIGNING_KEY_VERSION``: the version new purchases are signed with (default:
  the highest listed).
* ``CARD_METER_MASTER_KEY_FILE``: the master key the per-meter report keys are
  derived from (at least 32 bytes, written as hex).
* ``CARD_TAG_MASTER_KEY_FILE``: the master key the per-card NTAG passwords are
  derived from (at least 32 bytes, as hex).

In development and testing, what is not configured is generated on first use under
``<instance>/card-keys/`` and kept there. In production a missing key is an error:
no key that can create gas has a built-in or implicit value.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, current_app

from models.cardwrites import CardKeys

MASTER_KEY_BYTES = 32
_EXTENSION = "ranqi_card_keys"


class CardKeyError(RuntimeError):
    """The card keys are missing or unusable: a configuration error, not the kiosk's."""


def card_keys(app: Flask | None = None) -> CardKeys:
    """The app's card keys, loaded (or, in development, made) once per app."""
    app = app or current_app
    keys: CardKeys | None = app.extensions.get(_EXTENSION)
    if keys is None:
        keys = load_card_keys(app.config)
        app.extensions[_EXTENSION] = keys
    return keys


def load_card_keys(config: Mapping[str, Any]) -> CardKeys:
    """Read the keys the configuration names; make the missing ones in development."""
    env = config.get("RANQI_ENV", "production")
    generate = env in {"development", "testing"}
    key_dir = Path(config.get("INSTANCE_PATH", "instance")) / "card-keys"

    files = _signing_files(config.get("CARD_SIGNING_KEY_FILES"))
    if not files:
        if not generate:
            raise CardKeyError("CARD_SIGNING_KEY_FILES is not set")
        files = {1: key_dir / "signing-1.pem"}
        if not files[1].exists():
            _write_private(files[1], _pem(Ed25519PrivateKey.generate()))
    signing = {version: _read_signing_key(path) for version, path in files.items()}
    version = int(config.get("CARD_SIGNING_KEY_VERSION") or max(signing))

    meter_master = _master_key(
        config.get("CARD_METER_MASTER_KEY_FILE"),
        "CARD_METER_MASTER_KEY_FILE",
        key_dir / "meter-master.hex",
        generate,
    )
    tag_master = _master_key(
        config.get("CARD_TAG_MASTER_KEY_FILE"),
        "CARD_TAG_MASTER_KEY_FILE",
        key_dir / "tag-master.hex",
        generate,
    )
    try:
        return CardKeys(
            signing_keys=signing,
            signing_version=version,
            meter_master_key=meter_master,
            tag_master_key=tag_master,
        )
    except ValueError as error:
        raise CardKeyError(str(error)) from None


def _signing_files(value: object) -> dict[int, Path]:
    if not value:
        return {}
    if isinstance(value, Mapping):
        return {int(version): Path(path) for version, path in value.items()}
    files: dict[int, Path] = {}
    for item in str(value).split(","):
        version, sep, path = item.strip().partition("=")
        if not sep or not version.strip().isdigit() or not path.strip():
            raise CardKeyError(f"CARD_SIGNING_KEY_FILES: expected version=path, got {item!r}")
        files[int(version)] = Path(path.strip())
    return files


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _read_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise CardKeyError(f"cannot read the card signing key {path}: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CardKeyError(f"{path} is not an Ed25519 private key")
    return key


def _master_key(value: object, name: str, default: Path, generate: bool) -> bytes:
    if value:
        path = Path(str(value))
    elif generate:
        path = default
        if not path.exists():
            _write_private(path, secrets.token_hex(MASTER_KEY_BYTES).encode())
    else:
        raise CardKeyError(f"{name} is not set")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as error:
        raise CardKeyError(f"cannot read {name} ({path}): {error}") from None
    if len(key) < MASTER_KEY_BYTES:
        raise CardKeyError(f"{name} ({path}) must hold at least {MASTER_KEY_BYTES} bytes as hex")
    return key


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # created 0600 from the start: a key is never readable by others, not even briefly
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker made it first: use theirs
        return
    with os.fdopen(fd, "wb") as out:
        out.write(data)
