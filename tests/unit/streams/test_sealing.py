"""Dead-letter payloads are encrypted (AES-256-GCM), bound to their place, and rotatable;
nothing writes or reads dead letters outside development mode without a key."""

from __future__ import annotations

import base64

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

import streams.cli_context as cli_context
from streams.cli_edge import dlq_group, gateway_cmd
from streams.deploy_checks import UnsafeSettingsError, require_safe
from streams.sealing import (
    DEV_KEY_ID,
    DeadLetterKeyError,
    KeyRing,
    SealError,
    key_ring,
    parse_key,
)
from streams.settings import Settings

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
GOOD_PSEUDONYM_KEY = "k" * 48


def prod(**kw: object) -> Settings:
    return Settings(dev_mode=False, pseudonym_key=GOOD_PSEUDONYM_KEY, **kw)  # type: ignore[arg-type]


def strs(headers: list[tuple[str, bytes]], stage: str) -> dict[str, str]:
    return {"wardwatch.stage": stage, **{k: v.decode() for k, v in headers}}


def test_keys_parse_from_base64_and_hex_and_are_never_quoted() -> None:
    assert parse_key(base64.b64encode(K1).decode(), "X") == K1
    assert parse_key(base64.urlsafe_b64encode(K2).decode().rstrip("="), "X") == K2
    assert parse_key(K1.hex(), "X") == K1
    with pytest.raises(DeadLetterKeyError, match="32 random bytes") as e:
        parse_key("c2hvcnQta2V5", "WARDWATCH_DEAD_LETTER_KEY")
    assert "c2hvcnQta2V5" not in str(e.value)


def test_seal_and_open_round_trip_and_every_nonce_is_fresh() -> None:
    ring = KeyRing("k1", {"k1": K1})
    plain = b"PID|1||MRN-PLANT||QUORVEX^ZYXW"
    ct, hdrs = ring.seal(plain, topic="dlq", stage="gateway.mllp", key=b"hl7v2:LAB")
    ct2, hdrs2 = ring.seal(plain, topic="dlq", stage="gateway.mllp", key=b"hl7v2:LAB")
    assert b"MRN-PLANT" not in ct and ct != ct2 and hdrs != hdrs2
    assert dict(hdrs)["wardwatch.key_id"] == b"k1"
    h = strs(hdrs, "gateway.mllp")
    assert ring.open(ct, h, topic="dlq", key=b"hl7v2:LAB") == plain


@pytest.mark.parametrize(
    ("topic", "stage", "key"),
    [
        ("other.dlq", "gateway.mllp", b"k"),
        ("dlq", "normalise", b"k"),
        ("dlq", "gateway.mllp", b"x"),
    ],
)
def test_a_moved_ciphertext_does_not_open(topic: str, stage: str, key: bytes) -> None:
    ring = KeyRing("k1", {"k1": K1})
    ct, hdrs = ring.seal(b"payload", topic="dlq", stage="gateway.mllp", key=b"k")
    with pytest.raises(SealError, match="altered or moved"):
        ring.open(ct, strs(hdrs, stage), topic=topic, key=key)
    flipped = bytes([ct[0] ^ 1]) + ct[1:]
    with pytest.raises(SealError):
        ring.open(flipped, strs(hdrs, "gateway.mllp"), topic="dlq", key=b"k")


def test_rotation_old_keys_decrypt_the_current_one_encrypts() -> None:
    old = key_ring(prod(dead_letter_key=SecretStr(K1.hex()), dead_letter_key_id="2025a"))
    ct, hdrs = old.seal(b"payload", topic="dlq", stage="s", key=None)
    new = key_ring(
        prod(
            dead_letter_key=SecretStr(base64.b64encode(K2).decode()),
            dead_letter_key_id="2026a",
            dead_letter_old_keys=SecretStr(f"2025a:{K1.hex()}"),
        )
    )
    assert new.current_id == "2026a" and new.open(ct, strs(hdrs, "s"), topic="dlq", key=None)
    _, hdrs2 = new.seal(b"payload", topic="dlq", stage="s", key=None)
    assert dict(hdrs2)["wardwatch.key_id"] == b"2026a"
    retired = key_ring(prod(dead_letter_key=SecretStr(K2.hex()), dead_letter_key_id="2026a"))
    with pytest.raises(SealError, match="'2025a'"):
        retired.open(ct, strs(hdrs, "s"), topic="dlq", key=None)


def test_key_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(DeadLetterKeyError, match="not set"):
        key_ring(prod())
    with pytest.raises(DeadLetterKeyError, match="pairs"):
        key_ring(prod(dead_letter_key=SecretStr(K1.hex()), dead_letter_old_keys=SecretStr("x")))
    with pytest.raises(DeadLetterKeyError, match="its own id"):
        key_ring(
            prod(
                dead_letter_key=SecretStr(K1.hex()),
                dead_letter_old_keys=SecretStr(f"k1:{K2.hex()}"),
            )
        )
    dev = key_ring(Settings(dev_mode=True))
    assert dev.current_id == DEV_KEY_ID and dev.is_development


def test_deploy_check_refuses_writers_of_dead_letters_without_a_key() -> None:
    with pytest.raises(UnsafeSettingsError, match="WARDWATCH_DEAD_LETTER_KEY is not set"):
        require_safe(prod(), "gateway", database=False, dead_letters=True)
    require_safe(prod(), "replay", database=False)  # writes no dead letters
    require_safe(prod(dead_letter_key=SecretStr(K1.hex())), "gateway", dead_letters=True)
    with pytest.raises(UnsafeSettingsError, match="32 random bytes"):  # even in dev mode
        require_safe(
            Settings(dev_mode=True, dead_letter_key=SecretStr("short")),
            "worker",
            dead_letters=True,
        )
    require_safe(Settings(dev_mode=True), "worker", dead_letters=True)  # the public dev key


def test_the_gateway_and_dlq_replay_refuse_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_context, "_SETTINGS", prod())
    r = CliRunner().invoke(gateway_cmd, [])
    assert r.exit_code == 1 and "WARDWATCH_DEAD_LETTER_KEY is not set" in r.output, r.output
    r = CliRunner().invoke(dlq_group, ["replay", "--all"])
    assert r.exit_code == 1 and "dlq replay refuses to start" in r.output, r.output
