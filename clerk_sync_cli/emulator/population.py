"""The deterministic base population: user ``i`` of ``users``, generated on demand from (seed, i).

Users are *virtual*: nothing is stored per user but a bounded cache of serialized users.
``created_at`` and ``updated_at`` are non-decreasing in ``i`` (about 5% of users share a
millisecond with their predecessor, a *tie group*), so both orders are computable without
sorting: a user's *position* in them is its index, except inside a tie group, where users are
ordered by id. ``edge_cases=True`` mixes in the awkward users of :mod:`.edge_cases`.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import unicodedata

from clerk_sync_cli.emulator.config import EmulatorConfig
from clerk_sync_cli.emulator.edge_cases import EDGE_CASE_KINDS, EDGE_CASES, Draws
from clerk_sync_cli.emulator.ids import IdCodec, b62, blake, mix64
from clerk_sync_cli.emulator.render import ENC, Spec, clerk_image, render_user

END_MS = 1_780_272_000_000  # 2026-06-01T00:00:00Z: the base population ends here
_SPAN_MS = 3 * 365 * 24 * 3600 * 1000  # ... and spans about three years
_DAY_MS = 24 * 3600 * 1000


def day(ms: int) -> int:
    """The UTC midnight starting the day of ``ms``: Clerk's ``last_active_at`` has day precision."""
    return ms - ms % _DAY_MS


def _ascii_slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "".join(c for c in folded.lower() if c.isalnum())


_FIRST_NAMES: tuple[str, ...] = (
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Dennis", "Frances",
    "Ken", "Radia", "Linus", "Hedy", "Tim", "Katherine", "John", "Sophie", "Guido", "Anita",
    "Niklaus", "Karen", "Leslie", "Shafi", "Yukihiro", "Mary", "Brian", "Joan", "Bjarne",
    "José", "Zoë", "Søren", "Łukasz", "Chloé", "François", "Ngọc", "美咲", "Ayşe", "Björn",
    "Ólafur", "Siobhán",
)  # fmt: skip
_LAST_NAMES: tuple[str, ...] = (
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Ritchie",
    "Allen", "Thompson", "Perlman", "Torvalds", "Lamarr", "Berners-Lee", "Johnson", "McCarthy",
    "Wilson", "van Rossum", "Borg", "Wirth", "Spärck Jones", "Lamport", "Goldwasser",
    "Matsumoto", "Shaw", "Kernighan", "Clarke", "Stroustrup", "García", "Müller", "Ødegaard",
    "Nguyễn", "O'Brien", "Kowalski", "田中", "Öztürk", "Żółć", "Fernández", "Dubois", "Ní Bhriain",
)  # fmt: skip
_FIRST_SLUGS = tuple(_ascii_slug(n) or "user" for n in _FIRST_NAMES)
_LAST_SLUGS = tuple(_ascii_slug(n) or "user" for n in _LAST_NAMES)
_DOMAINS: tuple[str, ...] = (
    "example.com", "example.org", "example.net", "mail.example.com", "acme.example",
    "initech.example", "globex.example", "users.example.org",
)  # fmt: skip
_PLANS = ("free", "pro", "team", "enterprise")
_LOCALES = ("en-US", "en-GB", "fr-FR", "de-DE", "es-ES", "ja-JP", "pt-BR")
_GOOGLE_SCOPES = (
    "email https://www.googleapis.com/auth/userinfo.email "
    "https://www.googleapis.com/auth/userinfo.profile openid profile"
)
_OAUTH_EMAIL_VERIFICATION = {
    provider: '{"object":"verification_from_oauth","status":"verified",'
    f'"strategy":"from_{provider}","attempts":null,"expire_at":null}}'
    for provider in ("oauth_google", "oauth_github")
}


class Population:
    """The base users of one config: order, timestamps, content and a bounded render cache.

    Not thread-safe: the user store calls it under its lock.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config  # read for cache_bytes
        self.n = n = config.users
        root = hashlib.blake2b(f"clerk-sync-emulator:{config.seed}".encode(), digest_size=64)
        rd = root.digest()
        #: the seed's secret: keys the ids and every draw of users added later
        self.hkey = rd[:32]
        words = [int.from_bytes(rd[k : k + 8], "little") for k in range(0, 64, 8)]
        self._k_jitter, self.k_tie, self._k_upd, self._k_edge = words[0:4]
        self.ids = IdCodec(self.hkey, tuple(words[4:8]), n)
        self._tag_mask = (1 << max(24, n.bit_length())) - 1
        self._tag_mul = words[0] | 1
        self._tag_add = words[1]
        self._step = max(1000, min(3_600_000, _SPAN_MS // max(n, 1)))
        self._half = self._step // 2
        self._t0 = END_MS - n * self._step
        self._edge = config.edge_cases
        self._forced_edges: dict[int, str] = {}
        if self._edge and n >= len(EDGE_CASE_KINDS):
            kinds = len(EDGE_CASE_KINDS)
            for k, kind in enumerate(EDGE_CASE_KINDS):
                self._forced_edges[(2 * k + 1) * n // (2 * kinds)] = kind
        self._edge_cache: dict[str, list[int]] | None = None
        self._group_cache: dict[tuple[int, int], list[int]] = {}
        self._bytes_cache: dict[int, bytes] = {}
        self._bytes_cached = 0

    # -- order and timestamps ------------------------------------------------------------------

    def _tie(self, i: int) -> bool:
        """Whether base user ``i`` shares its created_at/updated_at with user ``i - 1``."""
        return i % 4 != 0 and (mix64(self.k_tie ^ i) & 15) == 0

    def _leader(self, i: int) -> int:
        while self._tie(i):
            i -= 1
        return i

    def _group(self, i: int) -> tuple[int, int]:
        start = self._leader(i)
        end = i + 1
        while end < self.n and self._tie(end):
            end += 1
        return start, end

    def created(self, i: int) -> int:
        g = self._leader(i)
        return self._t0 + g * self._step + mix64(self._k_jitter ^ g) % self._half

    def _times(self, i: int) -> tuple[int, int]:
        """(created_at, updated_at) of base user ``i``; both strictly increase between groups."""
        g = self._leader(i)
        created = self._t0 + g * self._step + mix64(self._k_jitter ^ g) % self._half
        e = mix64(self._k_upd ^ g)
        return created, created + (0 if e & 3 == 0 else (e >> 2) % self._half)

    def updated(self, i: int) -> int:
        return self._times(i)[1]

    def _group_order(self, start: int, end: int) -> list[int]:
        """Indices of a tie group sorted by id: position ``start + k`` holds ``order[k]``."""
        key = (start, end)
        order = self._group_cache.get(key)
        if order is None:
            order = sorted(range(start, end), key=self.ids.user_id)
            if len(self._group_cache) > 100_000:
                self._group_cache.clear()
            self._group_cache[key] = order
        return order

    def pos_to_index(self, p: int) -> int:
        if not self._tie(p) and (p + 1 >= self.n or not self._tie(p + 1)):
            return p
        start, end = self._group(p)
        return self._group_order(start, end)[p - start]

    def index_to_pos(self, i: int) -> int:
        if not self._tie(i) and (i + 1 >= self.n or not self._tie(i + 1)):
            return i
        start, end = self._group(i)
        return start + self._group_order(start, end).index(i)

    def value(self, name: str, i: int) -> int:
        """``created_at`` or ``updated_at`` of base user ``i`` (the same for its position)."""
        return self.created(i) if name == "created_at" else self.updated(i)

    def key(self, name: str, p: int) -> tuple[int, str]:
        """(value, id) of the user at base position ``p`` in order ``name``."""
        i = self.pos_to_index(p)
        return self.value(name, i), self.ids.user_id(i)

    def rank_lt(self, name: str, key: tuple[int, str]) -> int:
        """Number of base positions whose (value, id) sorts before ``key``."""
        value, uid = key
        lo, hi = 0, self.n
        while lo < hi:
            mid = (lo + hi) // 2
            if self.value(name, mid) < value:
                lo = mid + 1
            else:
                hi = mid
        if lo < self.n and self.value(name, lo) == value:
            start, end = self._group(lo)
            ids = [self.ids.user_id(i) for i in self._group_order(start, end)]
            return lo + bisect.bisect_left(ids, uid)
        return lo

    # -- content -------------------------------------------------------------------------------

    def _edge_kind(self, i: int) -> str | None:
        if not self._edge:
            return None
        forced = self._forced_edges.get(i)
        if forced is not None:
            return forced
        h = mix64(self._k_edge ^ i)
        if h % 1000 < 70:
            return EDGE_CASE_KINDS[(h >> 12) % len(EDGE_CASE_KINDS)]
        return None

    def edge_case_indices(self) -> dict[str, list[int]]:
        """Base indices per edge-case kind (every kind a key). O(users) once, cached after."""
        if self._edge_cache is None:
            found: dict[str, list[int]] = {k: [] for k in EDGE_CASE_KINDS}
            if self._edge:
                for i in range(self.n):
                    kind = self._edge_kind(i)
                    if kind is not None:
                        found[kind].append(i)
            self._edge_cache = found
        return self._edge_cache

    def _email_tag(self, i: int) -> str:
        return format((i * self._tag_mul + self._tag_add) & self._tag_mask, "x")

    def _spec(self, i: int) -> Spec:
        """Base user ``i``: every value drawn from keyed hashes of (seed, i)."""
        da = self.ids.digest(i)  # [0:15] id check suffix, [15:48] draws
        uid = self.ids.compose(i, da)
        db = blake(da)
        dc = blake(db)
        created, updated = self._times(i)
        fi = da[15] % len(_FIRST_NAMES)
        li = da[16] % len(_LAST_NAMES)
        method = da[17] % 20  # 0..8 google, 9..10 github, 11..19 email code
        pct = da[18] % 100
        pct2 = da[19] % 100
        e_created = created - da[20] * 8
        active = int.from_bytes(da[21:25], "little") % (3 * _DAY_MS)
        sign_in = int.from_bytes(da[25:31], "little") % max(1, END_MS - created)
        ext_num = int.from_bytes(da[31:41], "little") % 10**21
        style = da[41] & 3

        first: str | None = _FIRST_NAMES[fi]
        last: str | None = _LAST_NAMES[li]
        fs, ls = _FIRST_SLUGS[fi], _LAST_SLUGS[li]
        tag = self._email_tag(i)
        if style == 0:
            local = f"{fs}.{ls}.{tag}"
        elif style == 1:
            local = f"{fs}{tag}"
        elif style == 2:
            local = f"{fs[:1]}{ls}.{tag}"
        else:
            local = f"{ls}.{fs}+{tag}"
        address = f"{local}@{_DOMAINS[da[42] % len(_DOMAINS)]}"
        address_js = ENC(address)

        s = Spec(id=uid, first_name=first, last_name=last, created_at=created, updated_at=updated)
        email_id = "idn_2" + b62(db[:26])
        if method < 11:
            provider = "oauth_google" if method < 9 else "oauth_github"
            ext_idn = "idn_2" + b62(db[26:52])
            verified = _OAUTH_EMAIL_VERIFICATION[provider]
            linked = f'[{{"type":"{provider}","id":"{ext_idn}"}}]'
            profile = f"https://images.clerk.dev/{provider}/img_2{b62(dc[:26])}"
            s.profile_image_url = profile
            s.image_url = image = clerk_image("proxy", "src", profile)
            s.has_image = True
            username = "null"
            if provider == "oauth_google":
                obj, scopes = "google_account", _GOOGLE_SCOPES
                avatar = f"https://lh3.googleusercontent.com/a/{dc[26:40].hex()}"
                provider_uid = str(10**20 + ext_num)
            else:
                gh = ext_num % 99_999_999 + 1
                obj, scopes = "external_account", "read:user user:email"
                avatar = f"https://avatars.githubusercontent.com/u/{gh}?v=4"
                provider_uid = str(gh)
                handle = f"{fs}{ls}{gh % 1000}"[:39]
                username = f'"{handle}"'
                if pct < 40:
                    s.username = handle
            first_js = "null" if first is None else ENC(first)
            last_js = "null" if last is None else ENC(last)
            s.external_accounts = [
                f'{{"object":"{obj}","id":"{ext_idn}","provider":"{provider}",'
                f'"identification_id":"{ext_idn}","provider_user_id":"{provider_uid}",'
                f'"approved_scopes":"{scopes}","email_address":{address_js},'
                f'"email_address_verified":true,"first_name":{first_js},'
                f'"last_name":{last_js},"avatar_url":"{avatar}",'
                f'"image_url":"{image}","username":{username},'
                f'"phone_number":null,"public_metadata":{{}},"label":null,'
                f'"created_at":{e_created},"updated_at":{e_created},'
                f'"verification":{{"object":"verification_oauth","status":"verified",'
                f'"strategy":"{provider}","attempts":null,"expire_at":{e_created + 600_000}}}}}'
            ]
        else:
            linked = "[]"
            verified = (
                '{"object":"verification_otp","status":"verified","strategy":"email_code",'
                f'"attempts":1,"expire_at":{e_created + 600_000}}}'
            )
            s.image_url = clerk_image("default", "rid", uid)
            if pct < 55:
                s.password_enabled = True
                s.password_last_updated_at = created
            if pct2 < 6:
                s.first_name = s.last_name = None  # email-code sign-ups without a name
        s.emails = [
            f'{{"id":"{email_id}","object":"email_address","email_address":{address_js},'
            f'"reserved":false,"verification":{verified},"linked_to":{linked},'
            f'"matches_sso_connection":false,"created_at":{e_created},"updated_at":{created}}}'
        ]
        s.primary_email_id = email_id

        if pct < 12:
            s.external_id = f"legacy-{tag}"
        if pct2 >= 60:
            s.public_metadata = f'{{"plan":"{_PLANS[pct2 % len(_PLANS)]}"}}'
            if pct2 >= 85:
                s.private_metadata = f'{{"stripe_customer_id":"cus_{b62(dc[40:54])}"}}'
        if pct % 10 == 3:
            s.two_factor_enabled = True
            s.mfa_enabled_at = created + active
        if pct % 7 == 1:
            s.locale = _LOCALES[pct2 % len(_LOCALES)]
        if pct2 % 9 != 0:  # some users (e.g. imports) never signed in
            s.last_sign_in_at = created + sign_in
            s.last_active_at = day(min(END_MS, created + sign_in + active))
        if pct % 3 == 0:
            s.legal_accepted_at = created

        if self._edge:
            kind = self._edge_kind(i)
            if kind is not None:
                EDGE_CASES[kind](s, Draws(i, dc, tag, e_created, verified))
        return s

    # -- serialized users ----------------------------------------------------------------------

    def user_bytes(self, i: int) -> bytes:
        """Base user ``i`` as JSON, from the cache or rendered (and cached within its budget)."""
        data = self._bytes_cache.get(i)
        if data is None:
            data = render_user(self._spec(i)).encode("utf-8")
            budget = self.config.cache_bytes
            if self._bytes_cached + len(data) > budget:
                # evict the oldest ~1/8 of the cache (dicts keep insertion order)
                drop = max(1, len(self._bytes_cache) // 8)
                for key in list(itertools.islice(self._bytes_cache, drop)):
                    self._bytes_cached -= len(self._bytes_cache.pop(key))
            if len(data) <= budget:
                self._bytes_cache[i] = data
                self._bytes_cached += len(data)
        return data

    def cache_stats(self) -> dict[str, int]:
        """The render cache: users and bytes held, and its budget (``cache_bytes``)."""
        return {
            "users": len(self._bytes_cache),
            "bytes": self._bytes_cached,
            "budget": self.config.cache_bytes,
        }

    def warm(self, count: int | None = None) -> int:
        """Render the first ``count`` base users (default: all that fit the cache budget)."""
        n = self.n if count is None else min(count, self.n)
        budget = self.config.cache_bytes
        done = 0
        for i in range(n):
            if self._bytes_cached + 4096 > budget:
                break
            self.user_bytes(i)
            done += 1
        return done
