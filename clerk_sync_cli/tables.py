"""Where the app's tables live. Names are only ever composed with ``sql.Identifier``."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql


@dataclass(frozen=True)
class Tables:
    schema: str = "public"
    users: str = "users"
    settings: str = "user_monitoring_settings"

    def users_ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.users)

    def settings_ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.settings)
