"""Clerk's error answers, raised anywhere in a request and rendered once by the emulator."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An answer in Clerk's error format: status, ``code``, messages, ``meta`` and headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        long_message: str,
        meta: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(long_message)
        self.status = status
        self.code = code
        self.message = message
        self.long_message = long_message
        self.meta = meta or {}
        self.headers = headers or {}


def invalid(param: str, long_message: str) -> ApiError:
    return ApiError(
        422, "form_param_value_invalid", "is invalid", long_message, {"param_name": param}
    )


def not_found(long_message: str) -> ApiError:
    return ApiError(404, "resource_not_found", "not found", long_message)


def too_many(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "too_many_requests",
        "Too many requests",
        "Too many requests, retry later",
        headers={"Retry-After": str(retry_after)},
    )
