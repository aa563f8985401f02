"""A user's JSON in Clerk's wire format: :class:`Spec` (its variable parts) and its pieces."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: A JSON string literal (quotes included) for a str; the C accelerator, UTF-8 kept.
ENC: Callable[[str], str] = json.encoder.encode_basestring
#: Compact JSON, UTF-8 kept: how users given as dicts and every other answer are serialized.
DUMPS: Callable[[Any], str] = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_ESCAPED: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":")).encode


def json_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON; a string holding a lone surrogate, which UTF-8 cannot
    carry, is sent as JSON escapes (``\\ud800``), as any JSON encoder would."""
    try:
        return DUMPS(value).encode("utf-8")
    except UnicodeEncodeError:
        return _ESCAPED(value).encode("ascii")


def _js(value: str | None) -> str:
    return "null" if value is None else ENC(value)


def _jn(value: int | None) -> str:
    return "null" if value is None else str(value)


def verification(
    obj: str, status: str, strategy: str, attempts: int | None, expire: int | None
) -> str:
    return (
        f'{{"object":"{obj}","status":"{status}","strategy":"{strategy}",'
        f'"attempts":{_jn(attempts)},"expire_at":{_jn(expire)}}}'
    )


def email_json(
    ident: str, address: str, verification: str, linked_to: str, created: int, updated: int
) -> str:
    return (
        f'{{"id":"{ident}","object":"email_address","email_address":{_js(address)},'
        f'"reserved":false,"verification":{verification},"linked_to":{linked_to},'
        f'"matches_sso_connection":false,"created_at":{created},"updated_at":{updated}}}'
    )


def phone_json(ident: str, number: str, created: int) -> str:
    verified = verification("verification_otp", "verified", "phone_code", 1, created + 600_000)
    return (
        f'{{"id":"{ident}","object":"phone_number","phone_number":"{number}",'
        f'"reserved_for_second_factor":false,"default_second_factor":false,"reserved":false,'
        f'"verification":{verified},"linked_to":[],"backup_codes":null,'
        f'"created_at":{created},"updated_at":{created}}}'
    )


def deleted_user(user_id: str) -> dict[str, Any]:
    """Clerk's answer to deleting a user, which is also the data of its ``user.deleted`` event."""
    return {"object": "user", "id": user_id, "deleted": True}


def clerk_image(kind: str, key: str, value: str) -> str:
    """Clerk's image proxy URL: base64url of a small JSON document (inputs are URL-safe ASCII)."""
    raw = f'{{"type":"{kind}","{key}":"{value}"}}'.encode("ascii")
    return "https://img.clerk.com/" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


@dataclass(slots=True)
class Spec:
    """The variable parts of one user, rendered to JSON by :func:`render_user`."""

    id: str
    first_name: str | None
    last_name: str | None
    created_at: int
    updated_at: int
    emails: list[str] = field(default_factory=list)  # rendered JSON objects
    primary_email_id: str | None = None
    phones: list[str] = field(default_factory=list)
    primary_phone_id: str | None = None
    external_accounts: list[str] = field(default_factory=list)
    image_url: str | None = None
    profile_image_url: str = "https://www.gravatar.com/avatar?d=mp"
    has_image: bool = False
    username: str | None = None
    external_id: str | None = None
    locale: str | None = None
    public_metadata: str = "{}"
    private_metadata: str = "{}"
    password_enabled: bool = False
    two_factor_enabled: bool = False
    mfa_enabled_at: int | None = None
    password_last_updated_at: int | None = None
    last_sign_in_at: int | None = None
    last_active_at: int | None = None
    legal_accepted_at: int | None = None
    banned: bool = False
    locked: bool = False


def render_user(s: Spec) -> str:
    """One user as compact JSON with exactly the fields (and field order) of Clerk's User.

    Hot path (every uncached base user): no helper calls beyond the C string encoder.
    """
    enc, null = ENC, "null"
    t, f = "true", "false"
    ext_id = null if s.external_id is None else enc(s.external_id)
    email_id = null if s.primary_email_id is None else enc(s.primary_email_id)
    phone_id = null if s.primary_phone_id is None else enc(s.primary_phone_id)
    username = null if s.username is None else enc(s.username)
    first = null if s.first_name is None else enc(s.first_name)
    last = null if s.last_name is None else enc(s.last_name)
    locale = null if s.locale is None else enc(s.locale)
    image = null if s.image_url is None else enc(s.image_url)
    mfa = t if s.two_factor_enabled else f
    locked = s.locked
    return (
        f'{{"id":"{s.id}","object":"user","external_id":{ext_id},'
        f'"primary_email_address_id":{email_id},'
        f'"primary_phone_number_id":{phone_id},"primary_web3_wallet_id":null,'
        f'"username":{username},"first_name":{first},"last_name":{last},"locale":{locale},'
        f'"profile_image_url":{enc(s.profile_image_url)},"image_url":{image},'
        f'"has_image":{t if s.has_image else f},"public_metadata":{s.public_metadata},'
        f'"private_metadata":{s.private_metadata},"unsafe_metadata":{{}},'
        f'"email_addresses":[{",".join(s.emails)}],"phone_numbers":[{",".join(s.phones)}],'
        f'"web3_wallets":[],"passkeys":[],"password_enabled":{t if s.password_enabled else f},'
        f'"two_factor_enabled":{mfa},"totp_enabled":{mfa},"backup_code_enabled":{mfa},'
        f'"mfa_enabled_at":{null if s.mfa_enabled_at is None else s.mfa_enabled_at},'
        f'"mfa_disabled_at":null,"password_last_updated_at":'
        f"{null if s.password_last_updated_at is None else s.password_last_updated_at},"
        f'"external_accounts":[{",".join(s.external_accounts)}],"saml_accounts":[],'
        f'"enterprise_accounts":[],'
        f'"last_sign_in_at":{null if s.last_sign_in_at is None else s.last_sign_in_at},'
        f'"banned":{t if s.banned else f},"locked":{t if locked else f},"deprovisioned":false,'
        f'"lockout_expires_in_seconds":{"1800" if locked else null},'
        f'"verification_attempts_remaining":{"0" if locked else "100"},'
        f'"created_at":{s.created_at},"updated_at":{s.updated_at},'
        f'"delete_self_enabled":true,"create_organization_enabled":true,'
        f'"create_organizations_limit":null,'
        f'"last_active_at":{null if s.last_active_at is None else s.last_active_at},'
        f'"legal_accepted_at":{null if s.legal_accepted_at is None else s.legal_accepted_at},'
        f'"bypass_client_trust":false}}'
    )
