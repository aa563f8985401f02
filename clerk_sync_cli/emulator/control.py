"""The control API (``/_emulator``): script the emulator over HTTP, one small function a route.

Same Bearer key as ``/v1``; not rate limited, not delayed, never faulted. Unknown ids answer
404, invalid bodies 422, both in Clerk's error format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clerk_sync_cli.emulator.config import knob_values
from clerk_sync_cli.emulator.errors import invalid, not_found
from clerk_sync_cli.emulator.render import deleted_user

if TYPE_CHECKING:
    from clerk_sync_cli.emulator.api import Emulator


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise invalid("body", "the request body must be a JSON object") from None
    if not isinstance(value, dict):
        raise invalid("body", "the request body must be a JSON object")
    return value


def _stats(emulator: Emulator, body: bytes) -> Any:
    return emulator.stats()


def _reset_stats(emulator: Emulator, body: bytes) -> Any:
    emulator.reset_stats()
    return emulator.stats()


def _config(emulator: Emulator, body: bytes) -> Any:
    return knob_values(emulator.config)


def _edge_cases(emulator: Emulator, body: bytes) -> Any:
    return emulator.edge_case_ids()


def _configure(emulator: Emulator, body: bytes) -> Any:
    try:
        return emulator.configure(**_json_object(body))
    except ValueError as exc:
        raise invalid("config", str(exc)) from None


def _create_user(emulator: Emulator, body: bytes) -> Any:
    fields = _json_object(body)
    try:
        return emulator.create_user(**fields)
    except (TypeError, ValueError) as exc:
        raise invalid("user", str(exc)) from None


#: Routes without a user id: label -> answer.
def _jwt_key(emulator: Emulator, body: bytes) -> Any:
    return emulator.sessions.public_pem()


def _rotate_jwt_key(emulator: Emulator, body: bytes) -> Any:
    keep = _json_object(body).get("keep_old", True)
    return {"kid": emulator.rotate_jwt_key(keep_old=bool(keep))}


def _session_token(emulator: Emulator, uid: str, body: bytes) -> Any:
    return {"jwt": emulator.session_token(uid, **_json_object(body))}


_ROUTES: dict[str, Callable[[Emulator, bytes], Any]] = {
    "GET /_emulator/jwt-key": _jwt_key,
    "POST /_emulator/rotate-jwt-key": _rotate_jwt_key,
    "GET /_emulator/stats": _stats,
    "POST /_emulator/reset-stats": _reset_stats,
    "GET /_emulator/config": _config,
    "GET /_emulator/edge-cases": _edge_cases,
    "PATCH /_emulator/config": _configure,
    "POST /_emulator/users": _create_user,
}


def _update(emulator: Emulator, uid: str, body: bytes) -> Any:
    return emulator.update_user(uid, **_json_object(body))


def _ban(emulator: Emulator, uid: str, body: bytes) -> Any:
    return emulator.update_user(uid, banned=True)


def _unban(emulator: Emulator, uid: str, body: bytes) -> Any:
    return emulator.update_user(uid, banned=False)


def _delete(emulator: Emulator, uid: str, body: bytes) -> Any:
    emulator.delete_user(uid)
    return deleted_user(uid)


#: Routes on one user (``{id}``): label -> answer; an unknown id is a 404, bad fields a 422.
_USER_ROUTES: dict[str, Callable[[Emulator, str, bytes], Any]] = {
    "PATCH /_emulator/users/{id}": _update,
    "POST /_emulator/users/{id}/ban": _ban,
    "POST /_emulator/users/{id}/unban": _unban,
    "POST /_emulator/users/{id}/session-token": _session_token,
    "DELETE /_emulator/users/{id}": _delete,
}


def control(emulator: Emulator, label: str, arg: str | None, body: bytes) -> Any:
    """The JSON answer of control route ``label`` (``arg``: its user id, if it takes one)."""
    answer = _ROUTES.get(label)
    if answer is not None:
        return answer(emulator, body)
    user_answer = _USER_ROUTES.get(label)
    if user_answer is None:
        raise not_found("The requested resource was not found")
    assert arg is not None
    try:
        return user_answer(emulator, arg, body)
    except KeyError:
        raise not_found(f"No user was found with id {arg}") from None
    except (TypeError, ValueError) as exc:
        raise invalid("user", str(exc)) from None
