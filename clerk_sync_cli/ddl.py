"""The numbered SQL files of ``sql/``, found both in a checkout and in an installed wheel."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class SqlFile:
    name: str
    text: str


def sql_dir() -> Path:
    """``clerk_sync_cli/sql`` inside a wheel; the checkout's top-level ``sql/`` otherwise."""
    packaged = Path(str(resources.files("clerk_sync_cli"))) / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


def sql_files() -> list[SqlFile]:
    files = sorted(sql_dir().glob("[0-9][0-9][0-9]_*.sql"))
    if not files:
        raise FileNotFoundError(f"no SQL files in {sql_dir()}")
    return [SqlFile(path.name, path.read_text(encoding="utf-8")) for path in files]


def script() -> str:
    """All files as one script, for pasting into Supabase's SQL editor."""
    return "\n".join(f"-- ===== {f.name} =====\n{f.text.rstrip()}\n" for f in sql_files())
