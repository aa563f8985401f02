"""Deterministic pseudo-randomness and the ids of base users, which decode back to their index."""

from __future__ import annotations

import hashlib

M64 = (1 << 64) - 1
_M32 = (1 << 32) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # ASCII order
_B62_INDEX = {c: n for n, c in enumerate(_B62)}
_B62_TABLE = bytes(ord(_B62[b % 62]) for b in range(256))
_B62_PAIRS = tuple(a + b for a in _B62 for b in _B62)
_ID_DIGITS = 11  # 62**11 > 2**64
USER_PREFIX = "user_2"
_USER_ID_LEN = len("user_") + 27


def mix64(x: int) -> int:
    """splitmix64 finaliser: a fast, well-distributed 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def b62(data: bytes) -> str:
    """Bytes to base62 characters, one per byte (slightly biased, irrelevant here)."""
    return data.translate(_B62_TABLE).decode("ascii")


def blake(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=64).digest()


def _enc62_11(value: int) -> str:
    """``value`` (< 62**11) as exactly 11 base62 digits, most significant first."""
    value, d0 = divmod(value, 3844)
    value, d1 = divmod(value, 3844)
    value, d2 = divmod(value, 3844)
    value, d3 = divmod(value, 3844)
    value, d4 = divmod(value, 3844)
    pairs = _B62_PAIRS
    return _B62[value] + pairs[d4] + pairs[d3] + pairs[d2] + pairs[d1] + pairs[d0]


class IdCodec:
    """Base index <-> user id for a population of ``n`` users, keyed by the seed.

    An id is ``user_2`` + 11 base62 digits of a Feistel permutation of the index (ids look
    random but decode back) + a keyed check suffix (so an arbitrary id is not mistaken for one).
    """

    __slots__ = ("_feistel_keys", "_hkey", "_n")

    def __init__(self, hkey: bytes, feistel_keys: tuple[int, ...], n: int) -> None:
        self._hkey = hkey
        self._feistel_keys = feistel_keys
        self._n = n

    # A 4-round Feistel network over 64 bits keyed by the seed: a bijection, so ids decode.
    def _feistel(self, v: int) -> int:
        left, right = v >> 32, v & _M32
        for k in self._feistel_keys:
            left, right = right, left ^ ((((right ^ k) * _GOLDEN) & M64) >> 29) & _M32
        return (left << 32) | right

    def _unfeistel(self, v: int) -> int:
        left, right = v >> 32, v & _M32
        for k in reversed(self._feistel_keys):
            left, right = right ^ ((((left ^ k) * _GOLDEN) & M64) >> 29) & _M32, left
        return (left << 32) | right

    def digest(self, i: int) -> bytes:
        """The keyed hash all of base user ``i``'s values are drawn from ([0:15]: the id's)."""
        data = i.to_bytes(8, "little")
        return hashlib.blake2b(data, digest_size=64, key=self._hkey, person=b"user").digest()

    def compose(self, i: int, digest: bytes) -> str:
        """The id of base user ``i`` given its :meth:`digest`."""
        return USER_PREFIX + _enc62_11(self._feistel(i)) + b62(digest[:15])

    def user_id(self, i: int) -> str:
        return self.compose(i, self.digest(i))

    def decode(self, uid: str) -> int | None:
        """The base index an id encodes, or None (not a base id of this population)."""
        if len(uid) != _USER_ID_LEN or not uid.startswith(USER_PREFIX):
            return None
        v = 0
        for c in uid[6 : 6 + _ID_DIGITS]:
            d = _B62_INDEX.get(c)
            if d is None:
                return None
            v = v * 62 + d
        if v > M64:
            return None
        i = self._unfeistel(v)
        if i >= self._n or b62(self.digest(i)[:15]) != uid[6 + _ID_DIGITS :]:
            return None
        return i
