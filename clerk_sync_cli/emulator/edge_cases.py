"""The awkward users ``edge_cases=True`` mixes in: each kind a small change to a generated one.

The population draws about 7% of its users from :data:`EDGE_CASE_KINDS` (and, with at least one
user per kind, forces one of each); :data:`EDGE_CASES` maps a kind to the change it makes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from clerk_sync_cli.emulator.ids import b62
from clerk_sync_cli.emulator.render import Spec, email_json, phone_json, verification

_UNICODE_NAMES: tuple[tuple[str, str], ...] = (
    ("مريم", "الحسيني"),  # Arabic, right-to-left
    ("נועה", "כהן"),  # Hebrew, right-to-left
    ("Zo\u200be", "Zero\u200dWidth"),  # zero-width space / joiner
    ("\u202eAnna", "Override\u202c"),  # RTL override + pop directional formatting
    ("🦄", "Ünïcödé 🚀"),  # emoji, astral plane
    ("E\u0301lise", "Nguye\u0302\u0303n"),  # combining accents (not NFC)
)
_LONG_FIRST_NAME = ("Wolfeschlegelsteinhausenbergerdorff" * 4)[:140]


@dataclass(frozen=True, slots=True)
class Draws:
    """What an edge case may use besides the user: its index and draws of its generation."""

    i: int
    dc: bytes  # 64 keyed random bytes
    tag: str  # the user's unique email tag
    e_created: int  # when its first email address was created
    verification: str  # its primary address's verification (JSON)


def _no_email(s: Spec, d: Draws) -> None:
    """A phone-number sign-up: no email address, no OAuth account."""
    phone_id = "idn_2" + b62(d.dc[:26])
    s.emails, s.primary_email_id, s.external_accounts = [], None, []
    s.phones = [phone_json(phone_id, f"+1555{d.i % 10**7:07d}", d.e_created)]
    s.primary_phone_id = phone_id


def _more_emails(primary_first: bool, s: Spec, d: Draws) -> None:
    """Two more addresses (one verified only if the primary stays first), before or after it."""
    unverified = verification(
        "verification_otp", "unverified", "email_code", 0, d.e_created + 600_000
    )
    work = d.verification if primary_first else unverified
    t1, t2 = d.e_created + 1000, d.e_created + 2000
    extra = [
        email_json(
            "idn_2" + b62(d.dc[26:52]), f"work.{d.tag}@work.example.org", work, "[]", t1, t1
        ),
        email_json(
            "idn_2" + b62(d.dc[38:64]), f"alt.{d.tag}@example.net", unverified, "[]", t2, t2
        ),
    ]
    s.emails = [*s.emails, *extra] if primary_first else [*extra, *s.emails]


def _primary_not_first(s: Spec, d: Draws) -> None:
    _more_emails(False, s, d)


def _multiple_emails(s: Spec, d: Draws) -> None:
    _more_emails(True, s, d)


def _dangling_primary(s: Spec, d: Draws) -> None:
    s.primary_email_id = "idn_2" + b62(d.dc[10:36])


def _banned(s: Spec, d: Draws) -> None:
    s.banned = True


def _locked(s: Spec, d: Draws) -> None:
    s.locked = True


def _unicode_names(s: Spec, d: Draws) -> None:
    s.first_name, s.last_name = _UNICODE_NAMES[d.i % len(_UNICODE_NAMES)]


def _empty_names(s: Spec, d: Draws) -> None:
    s.first_name, s.last_name = "", ""


def _null_names(s: Spec, d: Draws) -> None:
    s.first_name, s.last_name = None, None


def _long_first_name(s: Spec, d: Draws) -> None:
    s.first_name = _LONG_FIRST_NAME


def _long_image_url(s: Spec, d: Draws) -> None:
    base = "https://img.clerk.com/"
    s.image_url = base + (b62(d.dc) * 10)[: 600 - len(base)]


def _empty_image_url(s: Spec, d: Draws) -> None:
    s.image_url = ""
    s.has_image = True
    if s.profile_image_url.startswith("https://www.gravatar.com"):
        s.profile_image_url = "https://images.clerk.dev/uploaded/img_2" + b62(d.dc[:26])


def _nul_in_last_name(s: Spec, d: Draws) -> None:
    last = s.last_name or "Null"
    s.last_name = last[:2] + "\x00" + last[2:]


#: The awkward users ``edge_cases=True`` mixes in (about 7% of the population), by kind.
EDGE_CASES: dict[str, Callable[[Spec, Draws], None]] = {
    # primary_email_address_id null, email_addresses [] (a phone number instead)
    "no_email": _no_email,
    "primary_not_first": _primary_not_first,  # several addresses, the primary not the first
    "multiple_emails": _multiple_emails,  # several addresses, primary first
    "dangling_primary": _dangling_primary,  # primary_email_address_id points to no address
    "banned": _banned,
    "locked": _locked,
    "unicode_names": _unicode_names,  # RTL, zero-width, combining characters, emoji
    "empty_names": _empty_names,  # first_name == last_name == ""
    "null_names": _null_names,  # first_name and last_name null
    "long_first_name": _long_first_name,  # 140 characters
    "long_image_url": _long_image_url,  # image_url of 600 characters
    # image_url "" (the spec allows no null), only profile_image_url set
    "empty_image_url": _empty_image_url,
    "nul_in_last_name": _nul_in_last_name,  # a NUL byte inside last_name (Postgres text rejects it)
}
#: The kinds of edge case, in the order users are drawn from.
EDGE_CASE_KINDS: tuple[str, ...] = tuple(EDGE_CASES)
