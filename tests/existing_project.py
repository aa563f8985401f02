"""An existing app's Supabase project, modelled independently of the project's own ``sql/``.

``fixtures/supabase_roles.sql`` makes Supabase's roles once per server (the tool's role is
``supa_postgres``: not a superuser, BYPASSRLS, owner of the app); ``fixtures/existing_project.sql``
builds, in one empty database, the guide's ``users`` table with the app's own settings table,
triggers (a plain INSERT without ON CONFLICT), row-level security and grants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

FIXTURES = Path(__file__).parent / "fixtures"

SUPA_POSTGRES = "supa_postgres"
SUPA_POSTGRES_PASSWORD = "p@ss/w:rd%"  # reserved URL characters on purpose
SUPA_READER = "supa_reader"


def install_roles(admin_dsn: str) -> None:
    """Create (or bring up to date) the cluster-level Supabase roles; safe to run again."""
    script = (FIXTURES / "supabase_roles.sql").read_text(encoding="utf-8")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(script)


def build_existing_project(admin_dsn: str, dbname: str) -> None:
    """As the superuser, build the existing app's project inside the empty database ``dbname``."""
    script = (FIXTURES / "existing_project.sql").read_text(encoding="utf-8")
    with psycopg.connect(make_conninfo(admin_dsn, dbname=dbname), autocommit=True) as conn:
        conn.execute(script)


def role_dsn(dsn: str, role: str) -> str:
    """``dsn`` connecting as ``role`` instead: the admin's password dropped, ``supa_postgres``'s
    own password set (the test servers trust local connections, so it is not checked there)."""
    params = conninfo_to_dict(dsn)
    params.pop("password", None)
    params["user"] = role
    if role == SUPA_POSTGRES:
        params["password"] = SUPA_POSTGRES_PASSWORD
    return make_conninfo("", **params)


def app_sign_in(
    conn: psycopg.Connection[Any],
    clerk_id: str,
    email: str,
    *,
    first_name: str | None = None,
    last_name: str | None = None,
    profile_image_url: str | None = None,
) -> None:
    """The app's own sign-in upsert, as the guide's backend does it (``POST /users/sync``)."""
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO public.users (clerk_id, email, first_name, last_name, profile_image_url)
            VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (clerk_id) DO UPDATE SET
                email = EXCLUDED.email,
                first_name = EXCLUDED.first_name,
                last_name = EXCLUDED.last_name,
                profile_image_url = EXCLUDED.profile_image_url,
                updated_at = now()
            """,
            (clerk_id, email, first_name, last_name, profile_image_url),
        )
