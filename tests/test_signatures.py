"""The webhook verifier against the published Standard Webhooks test vectors, and against
Svix's own library both ways (it signs, we verify; we sign, it verifies). Pure: no network,
no database."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from svix.webhooks import Webhook, WebhookVerificationError

from clerk_sync_cli.signatures import SignatureError, parse_secrets, sign, verify

# -- The published vectors ----------------------------------------------------------------------
# Copied from github.com/standard-webhooks/standard-webhooks (the spec's reference libraries,
# which all share them): libraries/python/tests/test_webhooks.py (test_sign_function and the
# PayloadForTesting cases), libraries/javascript/src/webhook.test.ts ("sign function works",
# "partial signature throws error", "invalid signature throws error") and
# libraries/go/webhook_test.go / webhook_symmetric_test.go (TestWebhookSign, the TestWebhook
# table, "old timestamp fails" at exactly the tolerance).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_SECRET_UNPREFIXED = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_PAYLOAD = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
#: Signatures the vectors say must not verify this message.
VECTOR_WRONG_SIGNATURES = {
    "another message's signature": "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
    "last character changed": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
    "not base64 of a digest": "v1,dawfeoifkpqwoekfpqoekf",
    "truncated to 8 characters": VECTOR_SIGNATURE[:8],
    "v1 with an empty value": "v1,",
}
#: The multi-signature vector: decoys of both versions around the valid entry.
VECTOR_DECOY = "Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
TOLERANCE_S = 5 * 60

KEYS = parse_secrets(VECTOR_SECRET)


def vector_headers(
    signature: str = VECTOR_SIGNATURE,
    msg_id: str = VECTOR_MSG_ID,
    timestamp: str = str(VECTOR_TIMESTAMP),
) -> dict[str, str]:
    return {"svix-id": msg_id, "svix-timestamp": timestamp, "svix-signature": signature}


def refused(
    headers: dict[str, str],
    body: bytes = VECTOR_PAYLOAD,
    *,
    now: float = VECTOR_TIMESTAMP,
    keys: tuple[bytes, ...] = KEYS,
) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        verify(keys, headers, body, now=now)
    assert caught.value.status in (400, 401), caught.value.status
    return caught.value


# -- parse_secrets --------------------------------------------------------------------------


def test_the_key_is_the_base64_after_whsec() -> None:
    assert parse_secrets(VECTOR_SECRET) == (base64.b64decode(VECTOR_SECRET_UNPREFIXED),)


def test_the_prefix_may_be_left_off() -> None:
    """The vectors' "verification works with and without signature prefix"."""
    assert parse_secrets(VECTOR_SECRET_UNPREFIXED) == parse_secrets(VECTOR_SECRET)


def test_several_space_separated_secrets_are_all_kept_in_order() -> None:
    other = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert parse_secrets(f"{VECTOR_SECRET}  {other}") == (
        base64.b64decode(VECTOR_SECRET_UNPREFIXED),
        b"k" * 32,
    )


@pytest.mark.parametrize("value", ["", "   ", "whsec_not*base64!", "whsec_%%%%"])
def test_an_unusable_secret_is_refused_without_quoting_it(value: str) -> None:
    """The vectors' "empty key raises error", and garbage after the prefix."""
    with pytest.raises(ValueError) as caught:  # noqa: PT011 (the message is checked below)
        parse_secrets(value)
    body = value.strip().removeprefix("whsec_")
    if body:
        assert body not in str(caught.value)


# -- the vectors ----------------------------------------------------------------------------


def test_the_published_signature_verifies() -> None:
    delivery = verify(KEYS, vector_headers(), VECTOR_PAYLOAD, now=VECTOR_TIMESTAMP)
    assert delivery.id == VECTOR_MSG_ID
    assert delivery.timestamp == VECTOR_TIMESTAMP


def test_the_unprefixed_secret_verifies_the_same_signature() -> None:
    keys = parse_secrets(VECTOR_SECRET_UNPREFIXED)
    verify(keys, vector_headers(), VECTOR_PAYLOAD, now=VECTOR_TIMESTAMP)


def test_svix_signs_the_vector_as_published() -> None:
    """The oracle itself reproduces the vector (so the round trips below are meaningful)."""
    stamp = datetime.fromtimestamp(VECTOR_TIMESTAMP, UTC)
    assert (
        Webhook(VECTOR_SECRET).sign(VECTOR_MSG_ID, stamp, VECTOR_PAYLOAD.decode())
        == VECTOR_SIGNATURE
    )


def test_our_signer_reproduces_the_vector() -> None:
    headers = sign(VECTOR_SECRET, VECTOR_MSG_ID, VECTOR_TIMESTAMP, VECTOR_PAYLOAD)
    assert headers == vector_headers()


@pytest.mark.parametrize(
    "signature", VECTOR_WRONG_SIGNATURES.values(), ids=list(VECTOR_WRONG_SIGNATURES)
)
def test_the_published_wrong_signatures_are_refused(signature: str) -> None:
    refused(vector_headers(signature))


def test_the_multi_signature_vector_verifies() -> None:
    header = " ".join(
        [f"v1,{VECTOR_DECOY}", f"v2,{VECTOR_DECOY}", VECTOR_SIGNATURE, f"v1,{VECTOR_DECOY}"]
    )
    verify(KEYS, vector_headers(header), VECTOR_PAYLOAD, now=VECTOR_TIMESTAMP)


def test_only_other_versions_is_refused() -> None:
    """A signature of another scheme (v1a: asymmetric) is never taken for a v1 one, even when
    it carries the right HMAC."""
    value = VECTOR_SIGNATURE.removeprefix("v1,")
    refused(vector_headers(f"v1a,{value}"))
    refused(vector_headers(f"v2,{value} v1a,{value}"))


@pytest.mark.parametrize("header", ["svix-id", "svix-timestamp", "svix-signature"])
def test_a_missing_header_is_refused(header: str) -> None:
    headers = vector_headers()
    del headers[header]
    refused(headers)


@pytest.mark.parametrize("header", ["svix-id", "svix-timestamp", "svix-signature"])
def test_an_empty_header_is_refused(header: str) -> None:
    refused({**vector_headers(), header: ""})


@pytest.mark.parametrize(
    "stamp",
    [
        "hello",
        "",
        " ",
        "1614265330.0",
        "-1614265330",
        "+1614265330",
        " 1614265330",
        "1e9",
        "0x6037c6f2",
        "\uff11\uff16\uff11\uff14\uff12\uff16\uff15\uff13\uff13\uff10",  # fullwidth digits: int() reads them as 1614265330
    ],
)
def test_a_malformed_timestamp_is_refused(stamp: str) -> None:
    """The vectors' "invalid timestamp throws error", and its cousins."""
    refused(vector_headers(timestamp=stamp))


@pytest.mark.parametrize(
    "signature",
    [
        "v1",  # no comma
        "garbage",
        VECTOR_SIGNATURE.removeprefix("v1,"),  # the value without its version
        ",g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        " ",
        "\t",
    ],
)
def test_a_malformed_signature_header_is_refused(signature: str) -> None:
    refused(vector_headers(signature))


@pytest.mark.parametrize(
    "offset",
    [-TOLERANCE_S - 1, TOLERANCE_S + 1, -86_400, 86_400, -VECTOR_TIMESTAMP],
)
def test_a_timestamp_more_than_five_minutes_off_is_refused(offset: int) -> None:
    """The vectors' "old timestamp fails" / "new timestamp fails": ``now`` is the verifier's
    clock, the signature itself is valid."""
    refused(vector_headers(), now=VECTOR_TIMESTAMP - offset)


@pytest.mark.parametrize("offset", [-TOLERANCE_S + 1, -60, 0, 60, TOLERANCE_S - 1])
def test_a_timestamp_within_five_minutes_is_accepted(offset: int) -> None:
    verify(KEYS, vector_headers(), VECTOR_PAYLOAD, now=VECTOR_TIMESTAMP - offset)


def test_a_stale_timestamp_is_refused_even_when_correctly_signed() -> None:
    """A captured delivery cannot be replayed later: re-signing is impossible without the key,
    and the old signature is bound to the old timestamp."""
    refused(vector_headers(), now=VECTOR_TIMESTAMP + TOLERANCE_S + 60)
    # a fresh timestamp with the old signature is not the signed content
    refused(
        vector_headers(timestamp=str(VECTOR_TIMESTAMP + TOLERANCE_S + 60)),
        now=VECTOR_TIMESTAMP + TOLERANCE_S + 60,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("body", b'{"test": 2432232315}'),
        ("body", b'{"test":2432232314}'),  # the same JSON, re-serialised: not the signed bytes
        ("body", VECTOR_PAYLOAD + b"\n"),
        ("body", b""),
        ("id", "msg_p5jXN8AQM9LWM0D4loKWxJeK"),
        ("timestamp", str(VECTOR_TIMESTAMP + 1)),
    ],
)
def test_any_change_to_the_signed_content_is_refused(field: str, value: bytes | str) -> None:
    if field == "body":
        assert isinstance(value, bytes)
        refused(vector_headers(), value)
    elif field == "id":
        assert isinstance(value, str)
        refused(vector_headers(msg_id=value))
    else:
        assert isinstance(value, str)
        refused(vector_headers(timestamp=value))


def test_the_wrong_secret_is_refused() -> None:
    other = parse_secrets("whsec_" + base64.b64encode(b"another key, 32 bytes long......").decode())
    refused(vector_headers(), keys=other)


def test_rotation_either_secret_verifies() -> None:
    old = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    new = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    keys = parse_secrets(f"{old} {new}")
    now = 1_700_000_000
    for secret in (old, new):
        headers = sign(secret, "msg_rotation", now, b"{}")
        assert verify(keys, headers, b"{}", now=now).id == "msg_rotation"
    # and a third one does not
    third = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    refused(sign(third, "msg_rotation", now, b"{}"), b"{}", now=now, keys=keys)


def test_refusals_never_quote_what_the_sender_sent() -> None:
    marker = "QUOTEME1234"
    cases = [
        vector_headers(f"v1,{marker}"),
        vector_headers(marker),
        vector_headers(msg_id=f"msg {marker}"),
        vector_headers(timestamp=marker),
    ]
    for headers in cases:
        error = refused(headers, marker.encode())
        assert marker not in str(error)
        assert marker not in error.message


# -- round trips with Svix's own library ------------------------------------------------------

PAYLOADS = [
    b'{"type":"user.created","data":{"id":"user_1"}}',
    '{"name": "Zoë 🦊", "list": [1, 2.5, null]}'.encode(),
    b'{\n  "spaced" :  true ,\n  "trailing": "\\u00e9"\n}\n',
    b"{}",
]


def svix_headers(secret: str, msg_id: str, when: datetime, body: bytes) -> dict[str, str]:
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(when.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, when, body.decode()),
    }


def fresh_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@pytest.mark.parametrize("body", PAYLOADS)
def test_what_svix_signs_we_verify(body: bytes) -> None:
    secret = fresh_secret()
    when = datetime.now(UTC).replace(microsecond=0)
    msg_id = "msg_" + secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")
    headers = svix_headers(secret, msg_id, when, body)
    delivery = verify(parse_secrets(secret), headers, body, now=when.timestamp() + 3)
    assert (delivery.id, delivery.timestamp) == (msg_id, int(when.timestamp()))
    # tampered with after signing: refused
    refused(headers, body + b" ", now=when.timestamp(), keys=parse_secrets(secret))


@pytest.mark.parametrize("body", PAYLOADS)
def test_what_we_sign_svix_verifies(body: bytes) -> None:
    secret = fresh_secret()
    now = int(datetime.now(UTC).timestamp())
    headers = sign(secret, "msg_ours", now, body)
    Webhook(secret).verify(body, headers)  # raises if not accepted
    with pytest.raises(WebhookVerificationError):
        Webhook(fresh_secret()).verify(body, headers)


Mutation = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]


def _set(name: str, value: str) -> Mutation:
    return lambda h, b: ({**h, name: value}, b)


def _drop(name: str) -> Mutation:
    return lambda h, b: ({k: v for k, v in h.items() if k != name}, b)


MUTATIONS: dict[str, Mutation] = {
    "untouched": lambda h, b: (h, b),
    "body changed": lambda h, b: (h, b.replace(b"1", b"2")),
    "body extended": lambda h, b: (h, b + b"\n"),
    "id changed": lambda h, b: ({**h, "svix-id": h["svix-id"] + "x"}, b),
    "timestamp +1": lambda h, b: ({**h, "svix-timestamp": str(int(h["svix-timestamp"]) + 1)}, b),
    "timestamp 6 min ago": lambda h, b: (
        {**h, "svix-timestamp": str(int(h["svix-timestamp"]) - 360)},
        b,
    ),
    "no id": _drop("svix-id"),
    "no timestamp": _drop("svix-timestamp"),
    "no signature": _drop("svix-signature"),
    "garbage signature": _set("svix-signature", "v1,AAAA"),
    "only v2": lambda h, b: ({**h, "svix-signature": "v2," + h["svix-signature"][3:]}, b),
    "decoy first": lambda h, b: (
        {**h, "svix-signature": f"v1,{VECTOR_DECOY} " + h["svix-signature"]},
        b,
    ),
    "decoy after": lambda h, b: (
        {**h, "svix-signature": h["svix-signature"] + f" v1,{VECTOR_DECOY}"},
        b,
    ),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_we_accept_exactly_what_svix_accepts(name: str) -> None:
    """Differential: one delivery, altered one way; Svix's verifier is the judge."""
    secret = fresh_secret()
    when = datetime.now(UTC).replace(microsecond=0)
    body = b'{"data":{"id":"user_123"},"type":"user.updated"}'
    headers, body = MUTATIONS[name](svix_headers(secret, "msg_diff", when, body), body)
    try:
        Webhook(secret).verify(body, headers)
        svix_accepts = True
    except Exception:  # svix raises ValueError too on some malformed headers
        svix_accepts = False
    status = None
    try:
        verify(parse_secrets(secret), headers, body, now=datetime.now(UTC).timestamp())
    except SignatureError as error:
        status = error.status
    assert status in (None, 400, 401)
    we_accept = status is None
    assert we_accept == svix_accepts, f"svix accepts: {svix_accepts}, we accept: {we_accept}"
