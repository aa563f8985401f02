"""Everything clerk-sync prints. The only module that imports rich.

Reports go to stdout (one JSON document with ``--json``, nothing else); progress, prompts,
warnings and errors go to stderr. Without a terminal the output is plain text.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from clerk_sync_cli.capped import KEEP
from clerk_sync_cli.doctor import Check, Level
from clerk_sync_cli.errors import ClerkSyncError
from clerk_sync_cli.history import RunRecord
from clerk_sync_cli.init_db import InitResult
from clerk_sync_cli.mapping import SYNCED_FIELDS
from clerk_sync_cli.plan import ACTIONS, Action, Change
from clerk_sync_cli.run import SyncResult
from clerk_sync_cli.scrub import ScrubbedStream, scrub, scrub_value
from clerk_sync_cli.states import LockState, RunStatus, SyncMode
from clerk_sync_cli.status import StatusReport
from clerk_sync_cli.store.webhooks import WebhookSummary
from clerk_sync_cli.user import UserReport

#: Runs that ended with a verdict (``status --json`` counts them).
SETTLED = (RunStatus.OK, RunStatus.PARTIAL, RunStatus.REFUSED)
SAMPLE = 20  # changes and warnings shown in the human report


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    return value


def change_json(change: Change) -> dict[str, Any]:
    return {
        "clerk_id": change.clerk_id,
        "action": change.action.value,
        "fields": {k: [_plain(old), _plain(new)] for k, (old, new) in change.fields.items()},
    }


def sync_json(result: SyncResult) -> dict[str, Any]:
    """The ``--json`` document of ``backfill`` and ``diff`` (the contract in the README)."""
    return {
        "command": result.command,
        "dry_run": result.dry_run,
        "status": result.status,
        "clerk_users": result.clerk_users,
        "db_users": result.db_users,
        "counts": {a.value: result.counts[a] for a in ACTIONS},
        "applied": {a.value: result.applied[a] for a in ACTIONS},
        "changes": [change_json(c) for c in result.changes],
        "changes_truncated": sum(result.counts[a] for a in ACTIONS if a is not Action.UNCHANGED)
        > len(result.changes),
        "warnings": [
            {"clerk_id": w.clerk_id, "field": w.field, "problem": w.problem}
            for w in result.warnings
        ],
        "failures": [{"clerk_id": f.clerk_id, "problem": f.problem} for f in result.failures],
        "refusal": result.refusal,
        "notes": list(result.notes),
        "completeness": None
        if result.completeness is None
        else {
            "clerk_before": result.completeness.clerk_before,
            "clerk_after": result.completeness.clerk_after,
            "read": result.completeness.read,
            "recovered": result.completeness.recovered,
            "complete": result.completeness.complete,
        },
        # the lists above keep their first entries; these are how many there were
        "totals": {
            "changes": sum(result.counts[a] for a in ACTIONS if a is not Action.UNCHANGED),
            "warnings": result.warnings.total,
            "failures": result.failures.total,
            "notes": result.notes.total,
        },
        "duration_s": round(result.duration_s, 3),
        **(_sync_extra(result) if result.mode is not None else {}),
    }


def _sync_extra(result: SyncResult) -> dict[str, Any]:
    """What ``sync --json`` adds to the document of ``backfill`` and ``diff``."""
    return {
        "mode": result.mode,
        "watermark": {
            "previous_ms": result.previous_watermark_ms,
            "since_ms": result.since_ms,
            "pages": result.pages,
            "recorded_ms": result.watermark_ms,
        },
        "full_reconcile": {
            "needed": result.full_reason is not None,
            "ran": result.mode is SyncMode.FULL,
            "reason": result.full_reason,
        },
        "run_id": result.run_id,
        "requests": result.requests,
    }


def _ms_iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def run_json(run: RunRecord, shown: str | None = None) -> dict[str, Any]:
    """One run of the history, as ``status --json`` lists it."""
    summary = run.summary
    duration = (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
    return {
        "id": run.id,
        "command": run.command,
        "dry_run": run.dry_run,
        "status": shown or run.status,
        "recorded_status": run.status,
        "mode": summary.get("mode"),
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "duration_s": None if duration is None else round(duration, 3),
        "instance_id": run.instance_id,
        "environment_type": run.environment_type,
        "host": run.host,
        "pid": run.pid,
        "counts": summary.get("counts"),
        "applied": summary.get("applied"),
        "drift": run.drift,
        "failures": summary.get("failures"),
        "refusal": summary.get("refusal"),
        "full_reason": summary.get("full_reason"),
        "error": summary.get("error"),
        "watermark_ms": run.watermark_ms,
    }


def status_json(report: StatusReport) -> dict[str, Any]:
    """The ``--json`` document of ``status`` (the contract in the README)."""
    lock = report.lock
    pin = report.pin
    finished = [(run, shown) for run, shown in report.runs if shown in SETTLED]
    return {
        "command": "status",
        "status": RunStatus.OK,
        "in_progress": report.in_progress,
        "bookkeeping": report.bookkeeping,
        "lock": {
            "state": lock.state,
            "run_id": lock.run_id,
            "host": lock.host,
            "pid": lock.pid,
            "heartbeat_age_s": None
            if lock.heartbeat_age_s is None
            else round(lock.heartbeat_age_s, 1),
        },
        "instance": None
        if pin is None
        else {
            "id": pin.instance.id,
            "environment_type": pin.instance.environment_type,
            "pinned_at": pin.pinned_at.isoformat(),
            "pinned_by_run": pin.run_id,
        },
        "watermark": None
        if report.state.watermark_ms is None
        else {
            "updated_at_ms": report.state.watermark_ms,
            "updated_at": _ms_iso(report.state.watermark_ms),
        },
        "last_full_reconcile": None if report.last_full is None else run_json(report.last_full),
        "last_drift": None
        if not finished
        else {
            "run_id": finished[0][0].id,
            "command": finished[0][0].command,
            "drift": finished[0][0].drift,
            "counts": finished[0][0].summary.get("counts"),
        },
        "runs": [run_json(run, shown) for run, shown in report.runs],
        "webhooks": webhooks_json(report.webhooks),
    }


def webhooks_json(summary: WebhookSummary | None) -> dict[str, Any]:
    """``status --json``'s ``webhooks``: the last delivery, outcomes over the last 24 h, and
    whether any arrived in that time."""
    if summary is None:
        return {"last_event_at": None, "last_24h": {}, "receiving": False}
    last = summary.last_event_at
    return {
        "last_event_at": None if last is None else last.isoformat(),
        "last_24h": dict(summary.last_24h),
        "receiving": summary.receiving,
    }


_MARKS = {Level.OK: "[green]✓[/]", Level.WARN: "[yellow]![/]", Level.FAIL: "[red]✗[/]"}


def check_json(check: Check) -> dict[str, Any]:
    return {
        "area": check.area,
        "check": check.name,
        "result": check.level.value,
        "detail": check.detail,
        "fix": check.fix,
    }


def user_json(report: UserReport) -> dict[str, Any]:
    """The ``--json`` document of ``user``."""
    mapped = None
    if report.mapped is not None:
        mapped = {k: _plain(v) for k, v in msgspec.structs.asdict(report.mapped).items()}
    return {
        "command": "user",
        "clerk_id": report.clerk_id,
        "found": report.found,
        "clerk": mapped,
        "row": {k: _plain(v) for k, v in report.row.items()} if report.row else None,
        "settings": {k: _plain(v) for k, v in report.settings.items()} if report.settings else None,
        "changes": [change_json(c) for c in report.changes],
        "warnings": [{"field": w.field, "problem": w.problem} for w in report.warnings],
        "applied": report.applied,
        "problem": report.problem,
    }


#: Control characters (C0 but tab and newline, DEL, C1) and bidirectional overrides: from
#: Clerk's data they could move the cursor, recolour or rewrite a terminal, or reorder a line.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _show(text: str) -> str:
    """Text fit for a terminal: unsafe characters shown as escapes, rich markup escaped."""
    return escape(_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _fmt(value: Any) -> str:
    if value is None:
        return "∅"
    text = str(_plain(value))
    return text if len(text) <= 60 else text[:57] + "…"


class Reporter:
    """Owns the consoles. ``json_mode``: stdout gets exactly one JSON document."""

    def __init__(
        self, *, json_mode: bool = False, quiet: bool = False, sample: int = SAMPLE
    ) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.sample = sample
        # every byte printed passes the scrubber (a secret never leaves, whole or in part)
        self.out = Console(file=ScrubbedStream.of(sys.stdout), highlight=False, soft_wrap=True)
        self.err = Console(
            file=ScrubbedStream.of(sys.stderr), stderr=True, highlight=False, soft_wrap=True
        )

    # -- generic -------------------------------------------------------------------------------

    def document(self, doc: dict[str, Any]) -> None:
        text = json.dumps(scrub_value(doc), ensure_ascii=False, default=str)
        sys.stdout.write(scrub(text) + "\n")
        sys.stdout.flush()

    def error(self, exc: ClerkSyncError, command: str | None = None) -> None:
        self.err.print(f"[bold red]error:[/] {_show(exc.message)}")
        if exc.hint:
            self.err.print(f"  {_show(exc.hint)}")
        if self.json_mode:
            self.document(
                {
                    "command": command,
                    "status": RunStatus.FAILED,
                    "error": {"message": exc.message, "hint": exc.hint},
                    "exit_code": int(exc.exit_code),
                }
            )

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/] {_show(text)}")

    def info(self, text: str) -> None:
        if not self.json_mode and not self.quiet:
            self.out.print(text)

    def progress(self, label: str) -> RichProgress | None:
        """A progress bar on stderr, only when stderr is a terminal."""
        return RichProgress(self.err, label) if self.err.is_terminal else None

    def confirm_deactivation(self, changes: Sequence[Change]) -> bool:
        self.err.print(
            f"[bold]{len(changes)} users are gone from Clerk and will be deactivated:[/]"
        )
        for change in changes[: self.sample]:
            self.err.print(f"  {change.clerk_id}")
        if len(changes) > self.sample:
            self.err.print(f"  … and {len(changes) - self.sample} more")
        answer = self.err.input("Deactivate them? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    # -- reports -------------------------------------------------------------------------------

    def sync_result(self, result: SyncResult) -> None:
        if self.json_mode:
            self.document(sync_json(result))
            return
        if self.quiet:
            self.out.print(self._summary_line(result))
            return
        if result.mode is not None:  # sync: made for cron, one line; why, on stderr
            for note in result.notes:
                self.err.print(f"note: {_show(note)}")
            if result.refusal:
                self.err.print(f"[bold red]refused:[/] {_show(result.refusal)}")
            self.out.print(self._summary_line(result))
            return
        title = f"clerk-sync {result.command}" + (
            " (dry run: nothing written)" if result.dry_run else ""
        )
        table = Table(title=title, title_justify="left")
        table.add_column("action")
        table.add_column("planned", justify="right")
        table.add_column("applied", justify="right")
        for action in ACTIONS:
            applied = (
                "-" if result.dry_run or action is Action.UNCHANGED else str(result.applied[action])
            )
            table.add_row(action.value, str(result.counts[action]), applied)
        self.out.print(table)
        self.out.print(
            f"Clerk users: {result.clerk_users}   table rows before: {result.db_users}   "
            f"{result.duration_s:.1f}s"
        )
        if result.changes:
            self.out.print(
                "[bold]Changes[/]" + (" (sample)" if len(result.changes) > self.sample else "")
            )
            for change in result.changes[: self.sample]:
                self.out.print("  " + _show(self._change_line(change)))
        self._list(
            "Warnings (stored as NULL)",
            [f"{w.clerk_id} {w.field}: {w.problem}" for w in result.warnings[: self.sample]],
            result.warnings.total,
        )
        self._list(
            "Not synced",
            [f"{f.clerk_id or '(no id)'}: {f.problem}" for f in result.failures[: self.sample]],
            result.failures.total,
        )
        for note in result.notes:
            self.out.print(f"note: {_show(note)}")
        if result.refusal:
            self.err.print(f"[bold red]refused:[/] {_show(result.refusal)}")
        self.out.print(self._summary_line(result))

    def _list(self, title: str, lines: list[str], total: int) -> None:
        """The first lines of a list of ``total`` entries."""
        if not total:
            return
        self.out.print(f"[bold]{title}[/] ({total})")
        for line in lines[: self.sample]:
            self.out.print(f"  {_show(line)}")
        if total > self.sample:
            self.out.print(f"  … and {total - self.sample} more (use --json for the first {KEEP})")

    @staticmethod
    def _change_line(change: Change) -> str:
        if not change.fields:
            return f"{change.clerk_id} {change.action.value}"
        parts = [f"{k}: {_fmt(old)} → {_fmt(new)}" for k, (old, new) in change.fields.items()]
        return f"{change.clerk_id} {change.action.value}  " + "; ".join(parts)

    @staticmethod
    def _summary_line(result: SyncResult) -> str:
        counts = " ".join(f"{a.value}={result.counts[a]}" for a in ACTIONS)
        mode = "dry-run " if result.dry_run else ""
        if result.mode is None:
            return f"{result.command}: {mode}{result.status} · {counts} · {result.duration_s:.1f}s"
        how = {
            SyncMode.WATERMARK: f"changed since the last run ({result.pages} page(s))",
            SyncMode.FULL: f"full reconcile: {result.full_reason}",
            SyncMode.NONE: "read nothing",
        }[result.mode]
        if result.full_needed:
            how += f" · full reconcile needed: {result.full_reason}"
        return (
            f"{result.command}: {mode}{result.status} · {how} · {counts} · "
            f"{result.requests} requests · {result.duration_s:.1f}s"
        )

    def user_report(self, report: UserReport) -> None:
        if self.json_mode:
            self.document(user_json(report))
            return
        if not report.found:
            self.out.print(f"{_show(report.clerk_id)}: not in Clerk and not in the table.")
            return
        table = Table(title=f"user {report.clerk_id}", title_justify="left")
        table.add_column("field")
        table.add_column("Clerk (mapped)")
        table.add_column("table row")
        for name in (*SYNCED_FIELDS, "created_at"):
            clerk = getattr(report.mapped, name) if report.mapped else None
            row = report.row.get(name) if report.row else None
            table.add_row(name, _show(_fmt(clerk)), _show(_fmt(row)))
        self.out.print(table)
        if report.clerk is None:
            self.out.print("Clerk: no such user (404).")
        if report.row is None:
            self.out.print("Table: no row.")
        elif report.settings is None:
            self.out.print("Settings: no row.")
        else:
            shown = {k: _plain(v) for k, v in report.settings.items() if k not in ("user_id",)}
            self.out.print("Settings: " + _show(", ".join(f"{k}={v}" for k, v in shown.items())))
        for warning in report.warnings:
            self.out.print(f"warning: {warning.field}: {_show(warning.problem)} (stored as NULL)")
        if report.problem:
            self.err.print(f"[red]problem:[/] {_show(report.problem)}")
        planned = [c for c in report.changes if c.action is not Action.UNCHANGED]
        if not planned:
            self.out.print(
                "Planned: nothing (see the problem above)."
                if report.problem
                else "Planned: nothing, the row matches Clerk."
            )
        for change in planned:
            verb = "Applied" if report.applied else "Planned"
            self.out.print(f"{verb}: " + _show(self._change_line(change)))

    def init_db(self, result: InitResult, target: str) -> None:
        if self.json_mode:
            self.document(
                {
                    "command": "init-db",
                    "status": RunStatus.OK,
                    "database": target,
                    "app_schema": "created" if result.created_app_schema else "existing",
                    "applied": result.applied,
                    "findings": [check_json(c) for c in result.findings],
                }
            )
            return
        for name in result.applied:
            self.out.print(f"applied {name}")
        if result.created_app_schema:
            self.out.print(
                "Created the guide's users and settings tables and their triggers (marked as "
                "clerk-sync's), with row-level security on and no policy: only their owner and "
                "roles that bypass it (Supabase's postgres, service_role) can read them."
            )
        else:
            t = result.project.tables
            self.out.print(
                f"{t.schema}.{t.users} exists: the app's schema was left exactly as it is "
                "(no table, column, function, trigger or extension created or changed). Found:"
            )
        self.checks(result.findings)
        self.out.print(f"Schema ready in {target}.")

    def checks(self, checks: Sequence[Check]) -> None:
        """One line a check (✓ / ! / ✗), and the fix under anything not ✓."""
        width = max((len(f"{c.area}: {c.name}") for c in checks), default=0)
        for check in checks:
            mark = _MARKS[check.level]
            label = f"{check.area}: {check.name}".ljust(width)
            self.out.print(f"{mark} {_show(label)}  {_show(check.detail)}")
            if check.fix and check.level is not Level.OK:
                self.out.print(f"  [dim]fix:[/] {_show(check.fix)}")

    def doctor(self, checks: Sequence[Check], fixed: Sequence[str], ok: bool) -> None:
        if self.json_mode:
            self.document(
                {
                    "command": "doctor",
                    "status": RunStatus.OK if ok else RunStatus.FAILED,
                    "checks": [check_json(c) for c in checks],
                    "fixed": list(fixed),
                }
            )
            return
        for line in fixed:
            self.out.print(f"fixed: dropped trigger {_show(line)}")
        self.checks(checks)
        if ok:
            self.out.print("Nothing is ✗: next, `clerk-sync diff --dry-run`.")
        else:
            self.out.print("Fix what is marked ✗ above, then run `clerk-sync doctor` again.")

    def status(self, report: StatusReport) -> None:
        if self.json_mode:
            self.document(status_json(report))
            return
        if not report.bookkeeping:
            self.out.print(
                "No clerk-sync bookkeeping in this database yet (schema clerk_sync): no runs, "
                "no pinned instance. The first writing run creates it."
            )
            return
        lock = report.lock
        if lock.state is LockState.FREE:
            self.out.print("Lock: free (no run in progress).")
        else:
            age = f"{lock.heartbeat_age_s:.0f}s" if lock.heartbeat_age_s is not None else "?"
            who = f"run {lock.run_id} (pid {lock.pid} on {lock.host}), last heard from {age} ago"
            if lock.state is LockState.HELD:
                self.out.print(f"Lock: held by {_show(who)}: a run is in progress.")
            else:
                self.out.print(
                    f"Lock: [bold yellow]stale[/], {_show(who)}: it stopped; "
                    "the next run takes the lock over."
                )
        pin = report.pin
        self.out.print(
            "Clerk instance: not pinned yet (the first writing run pins it)."
            if pin is None
            else f"Clerk instance: {_show(pin.instance.describe())}, pinned {_when(pin.pinned_at)}."
        )
        full = report.last_full
        self.out.print(
            "Last full reconcile: none yet."
            if full is None
            else f"Last full reconcile: run {full.id} ({full.command}), {full.status}, "
            f"finished {_when(full.finished_at)}."
        )
        if report.state.watermark_ms is not None:
            mark = datetime.fromtimestamp(report.state.watermark_ms / 1000, UTC)
            self.out.print(f"Watermark: users changed up to {_when(mark)} are synced.")
        self._webhooks(report.webhooks)
        if not report.runs:
            self.out.print("No runs yet.")
            return
        table = Table(title="Last runs", title_justify="left")
        for name in ("id", "command", "started", "took", "status", "drift", "note"):
            table.add_column(name, justify="right" if name in ("id", "took", "drift") else "left")
        for run, shown in report.runs:
            took = (
                f"{(run.finished_at - run.started_at).total_seconds():.1f}s"
                if run.finished_at
                else "-"
            )
            command = run.command + (" (dry run)" if run.dry_run else "")
            if run.summary.get("mode"):
                command += f" [{run.summary['mode']}]"
            note = run.summary.get("error") or run.summary.get("refusal") or ""
            table.add_row(
                str(run.id),
                _show(command),
                _when(run.started_at),
                took,
                shown,
                str(run.drift),
                _show(str(note)[:80]),
            )
        self.out.print(table)

    # -- demo and emulator -----------------------------------------------------------------------

    def step(self, text: str) -> None:
        if not self.json_mode:
            self.out.print(f"[bold cyan]==>[/] {_show(text)}")

    def run_result(self, title: str, result: SyncResult) -> None:
        if not self.json_mode:
            self.sync_result(result)
            self.out.print()

    def demo_result(self, runs: list[SyncResult], kept: dict[str, Any], ok: bool) -> None:
        if self.json_mode:
            self.document(
                {
                    "command": "demo",
                    "status": RunStatus.OK if ok else RunStatus.FAILED,
                    "runs": [sync_json(r) for r in runs],
                    **kept,
                }
            )
            return
        if kept.get("database_url"):
            self.out.print("Left running (--keep). Point clerk-sync at them with:")
            self.out.print(f"  export DATABASE_URL='{kept['database_url']}'")
            self.out.print(f"  export CLERK_API_URL='{kept['clerk_api_url']}'")
            self.out.print("  export CLERK_SECRET_KEY=sk_test_emulator")
            self.out.print("  clerk-sync diff --dry-run")
            self.out.print(f"Stop the emulator with: kill {kept['emulator_pid']}")
            if kept.get("stop_postgres"):
                self.out.print(f"Stop Postgres with: {kept['stop_postgres']}")

    def emulator_ready(self, base_url: str, key_shown: str, users: int) -> None:
        # first line is machine-readable: the demo and scripts read it
        sys.stdout.write(f"CLERK_API_URL={base_url}\n")
        sys.stdout.flush()
        self.err.print(
            f"Clerk emulator with {users} users at {base_url} (secret key: {key_shown}). "
            "Ctrl-C to stop."
        )

    def _webhooks(self, summary: WebhookSummary | None) -> None:
        if summary is None or summary.last_event_at is None:
            self.out.print(
                "Webhooks: none received yet (run `clerk-sync serve` and add its endpoint in "
                "Clerk's dashboard; cron's `sync` keeps the table right meanwhile)."
            )
            return
        if not summary.receiving:
            self.out.print(
                f"Webhooks: [bold yellow]none in the last 24 h[/] (last {_when(summary.last_event_at)}): "
                "check that `serve` runs and the endpoint in Clerk's dashboard is enabled."
            )
            return
        counts = ", ".join(f"{n} {outcome}" for outcome, n in summary.last_24h.items())
        self.out.print(
            f"Webhooks: last received {_when(summary.last_event_at)}; last 24 h: {counts}."
        )

    def serve_ready(self, host: str, port: int, *, signin: bool) -> None:
        shown = f"[{host}]" if ":" in host else host
        also = ", sign-in: POST /api/v1/users/sync" if signin else ""
        self.err.print(
            f"clerk-sync serve: listening on http://{shown}:{port} "
            f"(webhooks: POST /api/webhooks/clerk{also}, health: GET /healthz). Ctrl-C to stop."
        )

    def sql_script(self, text: str) -> None:
        if self.json_mode:
            self.document({"command": "init-db", "status": RunStatus.OK, "sql": text})
        else:
            sys.stdout.write(text)


class RichProgress:
    def __init__(self, console: Console, label: str) -> None:
        self._progress = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task: Any = None

    def start(self, total: int | None) -> None:
        self._progress.start()
        self._task = self._progress.add_task("users", total=total)

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def finish(self) -> None:
        self._progress.stop()
