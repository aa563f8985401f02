"""The ``clerk-sync`` command line: each command is a short recipe of named steps.

Build settings, the Clerk client, the store and the reporter; call one library function;
print its report. Expected failures become a message and an exit code in one place,
:func:`handle_errors`.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from enum import StrEnum
from typing import Annotated, NoReturn

import httpx
import typer

from clerk_sync_cli import __version__, ddl
from clerk_sync_cli.clerk import PAGE_LIMIT, ClerkClient, RetryPolicy, default_max_rps
from clerk_sync_cli.doctor import (
    ClerkFacts,
    DatabaseFacts,
    Facts,
    diagnose,
    failed,
    gather_clerk,
    gather_database,
)
from clerk_sync_cli.emulator import (
    DEFAULT_PORT,
    DEFAULT_SECRET_KEY,
    EmulatorConfig,
    resolve_rate_limit,
)
from clerk_sync_cli.errors import ClerkSyncError, ConfigError, ExitCode
from clerk_sync_cli.init_db import init_db as run_init_db
from clerk_sync_cli.ping import check_ping_url, ping
from clerk_sync_cli.plan import DeactivationGuard
from clerk_sync_cli.report import Reporter
from clerk_sync_cli.run import DEFAULT_CONCURRENCY, SyncOptions
from clerk_sync_cli.scrub import scrub
from clerk_sync_cli.settings import (
    Settings,
    describe_dsn,
    env_file_warning,
    is_loopback,
    key_kind,
    load_settings,
    setting_sources,
)
from clerk_sync_cli.states import RunStatus
from clerk_sync_cli.status import collect_status
from clerk_sync_cli.store import Store, connect
from clerk_sync_cli.sync import reconcile
from clerk_sync_cli.user import inspect_user

app = typer.Typer(
    name="clerk-sync",
    help=(
        "Make your Postgres `users` table match Clerk: backfill, reconcile, inspect.\n\n"
        "Example: clerk-sync diff --dry-run"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# -- shared options ------------------------------------------------------------------------------

SecretKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--clerk-secret-key",
        envvar="CLERK_SECRET_KEY",
        show_envvar=True,
        help="Clerk secret key (sk_live_… / sk_test_…). Avoid: an option shows in `ps` and "
        "shell history; set the env var or .env instead.",
    ),
]
DatabaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="DATABASE_URL",
        show_envvar=True,
        help="Postgres connection string (Supabase: session pooler or direct). Avoid giving "
        "it as an option (it shows in `ps`); set the env var or .env instead.",
    ),
]
ApiUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--clerk-api-url",
        envvar="CLERK_API_URL",
        show_envvar=True,
        help="Clerk Backend API base URL [default: https://api.clerk.com/v1].",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Plan and report; write nothing to users or settings.")
]
MaxRpsOpt = Annotated[
    float | None,
    typer.Option(
        "--max-rps",
        min=0.1,
        help="Requests per second to Clerk [default: 90 for sk_live_ keys, 9 for sk_test_ keys].",
    ),
]
BatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        max=PAGE_LIMIT,
        help="Users read from Clerk and written per transaction (one page).",
    ),
]
ConcurrencyOpt = Annotated[
    int,
    typer.Option(
        "--concurrency",
        min=1,
        max=32,
        help="Slices of the user list read at once (all share the --max-rps pace).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only a one-line summary.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Apply deactivations without asking.")]
MaxDeactivationsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-deactivations",
        min=0,
        help="Allow up to N deactivations, overriding the safety limit "
        "(more than 10 and more than 5% of active rows).",
    ),
]
AllowInstanceChangeOpt = Annotated[
    bool,
    typer.Option(
        "--allow-instance-change",
        help="Run although the key belongs to another Clerk instance than the one that "
        "filled the table, and re-pin the table to it.",
    ),
]
PingUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--ping-url",
        envvar="CLERK_SYNC_PING_URL",
        show_envvar=True,
        help="After the run, GET this URL on success and URL/fail otherwise "
        "(healthchecks.io style). Never printed: it may hold a token.",
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clerk-sync {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Make your Postgres `users` table match Clerk."""


# -- the one place errors become exit codes ----------------------------------------------------


@contextmanager
def handle_errors(reporter: Reporter, command: str) -> Iterator[None]:
    """Expected failures: message + exit code. Anything else: one line, exit 70, no secrets
    (every secret the settings hold was registered with the scrubber when they were loaded)."""
    try:
        yield
    except ClerkSyncError as exc:
        reporter.error(exc, command)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        reporter.err.print("interrupted; nothing half-applied (each batch is atomic).")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if os.environ.get("CLERK_SYNC_DEBUG"):
            raise
        text = scrub(f"{type(exc).__name__}: {exc}")  # whole, before it is cut short
        error = ClerkSyncError(
            f"internal error: {text[:300]}",
            "This is a bug in clerk-sync; rerun with CLERK_SYNC_DEBUG=1 for a traceback.",
        )
        reporter.error(error, command)
        raise typer.Exit(70) from None


def _settings(reporter: Reporter, **given: str | None) -> Settings:
    settings = load_settings(**given)
    warning = env_file_warning()
    if warning:
        reporter.warn(warning)
    return settings


def _clerk(
    stack: ExitStack, settings: Settings, max_rps: float | None, *, attempts: int | None = None
) -> ClerkClient:
    http = stack.enter_context(httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0)))
    retry = RetryPolicy(
        attempts=attempts or settings.clerk_sync_max_attempts,
        max_seconds=settings.clerk_sync_retry_seconds,
    )
    return ClerkClient(
        http, settings.api_url(), settings.secret_key(), max_rps=max_rps, retry=retry
    )


def _store(stack: ExitStack, settings: Settings) -> Store:
    dsn = settings.dsn()
    store = stack.enter_context(
        Store(
            lambda: connect(dsn),
            settings.tables(),
            statement_timeout_ms=settings.clerk_sync_statement_timeout_ms,
            lock_timeout_ms=settings.clerk_sync_lock_timeout_ms,
        )
    )
    store.check_connection()
    return store


def _run_sync(
    options: SyncOptions,
    *,
    clerk_secret_key: str | None,
    database_url: str | None,
    clerk_api_url: str | None,
    max_rps: float | None,
    json_out: bool,
    quiet: bool,
    prompt: bool,
    ping_url: str | None,
    fail_on_drift: bool = False,
) -> NoReturn:
    """backfill, diff and sync: run, print the report, ping, and exit with the run's code."""
    with handle_errors(Reporter(json_mode=json_out), options.command):
        _check_ping_url(ping_url)
    with _pinging(ping_url, json_out):
        reporter = Reporter(json_mode=json_out, quiet=quiet)
        with handle_errors(reporter, options.command), ExitStack() as stack:
            settings = _settings(
                reporter,
                clerk_secret_key=clerk_secret_key,
                database_url=database_url,
                clerk_api_url=clerk_api_url,
            )
            client = _clerk(stack, settings, max_rps)
            store = _store(stack, settings)
            confirm = reporter.confirm_deactivation if prompt and _interactive() else None
            result = reconcile(
                client, store, options, progress=reporter.progress("Reading Clerk"), confirm=confirm
            )
            reporter.sync_result(result)
        raise typer.Exit(int(result.exit_code(fail_on_drift=fail_on_drift)))


def _quiet_driver() -> None:
    """psycopg logs a warning when it cleans up after a lost connection ("error ignored
    terminating <Pipeline [BAD]>"); Python prints such warnings when nobody handles them. The
    lost connection is reported once, by us (reopened, or exit 5); CLERK_SYNC_DEBUG=1 shows them."""
    if not os.environ.get("CLERK_SYNC_DEBUG"):
        logging.getLogger("psycopg").addHandler(logging.NullHandler())


def _tune_gc() -> None:
    """A walk makes ~15,000 short-lived containers a page, freed by reference counting;
    Python's default thresholds would run ~20 collections a page over them, and full ones over
    everything queued (about a second of CPU per 100k users). Collect far less often, and
    never look at what was imported. Cyclic garbage still goes: nothing big lives in it.
    Process-wide, like :func:`_quiet_driver`: only the ``clerk-sync`` process does it
    (:func:`main`), not a host that calls the app in-process (the tests). The process started
    with collection off (``clerk_sync_cli.__main__``): it is turned on here."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    gc.enable()


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


@contextmanager
def _pinging(ping_url: str | None, json_out: bool) -> Iterator[None]:
    """Ping after the command, with whatever exit code it ends: the URL on 0, URL/fail
    otherwise. A failed ping only warns (naming the host); it never changes the exit code."""
    code = 70  # anything handle_errors did not turn into an exit code
    try:
        yield
        code = 0
    except typer.Exit as exc:
        code = exc.exit_code
        raise
    finally:
        url = ping_url or _ping_url_from_env_file()
        warning = ping(url, ok=code == 0) if url else None
        if warning:
            Reporter(json_mode=json_out).warn(warning)


def _check_ping_url(ping_url: str | None) -> None:
    """A malformed ping URL is a configuration error at the start, not after a good run."""
    url = ping_url or _ping_url_from_env_file()
    problem = check_ping_url(url) if url else None
    if problem:
        raise ConfigError(f"CLERK_SYNC_PING_URL (or --ping-url) is malformed: {problem}.")


def _ping_url_from_env_file() -> str | None:
    try:
        url = load_settings().clerk_sync_ping_url
    except ClerkSyncError:
        return None
    return url.get_secret_value() if url else None


# -- commands ------------------------------------------------------------------------------------


@app.command()
def backfill(
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    batch_size: BatchSizeOpt = PAGE_LIMIT,
    concurrency: ConcurrencyOpt = DEFAULT_CONCURRENCY,
    max_rps: MaxRpsOpt = None,
    allow_instance_change: AllowInstanceChangeOpt = False,
    ping_url: PingUrlOpt = None,
    clerk_secret_key: SecretKeyOpt = None,
    database_url: DatabaseUrlOpt = None,
    clerk_api_url: ApiUrlOpt = None,
) -> None:
    """Create, update and reactivate rows from Clerk; repair missing settings. Never deactivates.

    Example: clerk-sync backfill --dry-run
    """
    options = SyncOptions(
        "backfill",
        dry_run=dry_run,
        page_size=batch_size,
        concurrency=concurrency,
        allow_instance_change=allow_instance_change,
    )
    _run_sync(
        options,
        clerk_secret_key=clerk_secret_key,
        database_url=database_url,
        clerk_api_url=clerk_api_url,
        max_rps=max_rps,
        json_out=json_out,
        quiet=quiet,
        prompt=False,
        ping_url=ping_url,
    )


@app.command()
def diff(
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="Exit 1 when drift was found (like git diff).")
    ] = False,
    max_deactivations: MaxDeactivationsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    batch_size: BatchSizeOpt = PAGE_LIMIT,
    concurrency: ConcurrencyOpt = DEFAULT_CONCURRENCY,
    max_rps: MaxRpsOpt = None,
    allow_instance_change: AllowInstanceChangeOpt = False,
    ping_url: PingUrlOpt = None,
    clerk_secret_key: SecretKeyOpt = None,
    database_url: DatabaseUrlOpt = None,
    clerk_api_url: ApiUrlOpt = None,
) -> None:
    """Full reconcile: everything backfill does, plus deactivating rows of users deleted in Clerk.

    Example: clerk-sync diff --dry-run --exit-code
    """
    options = SyncOptions(
        "diff",
        dry_run=dry_run,
        deactivate=True,
        page_size=batch_size,
        concurrency=concurrency,
        guard=DeactivationGuard(max_deactivations=max_deactivations),
        allow_instance_change=allow_instance_change,
    )
    _run_sync(
        options,
        clerk_secret_key=clerk_secret_key,
        database_url=database_url,
        clerk_api_url=clerk_api_url,
        max_rps=max_rps,
        json_out=json_out,
        quiet=quiet,
        prompt=not yes,
        ping_url=ping_url,
        fail_on_drift=exit_code,
    )


@app.command("sync")
def sync_command(
    dry_run: DryRunOpt = False,
    no_full: Annotated[
        bool,
        typer.Option(
            "--no-full",
            help="Never run the full reconcile; when one is needed, say so and exit 1.",
        ),
    ] = False,
    overlap_minutes: Annotated[
        float,
        typer.Option(
            "--overlap-minutes",
            min=0,
            help="Also re-read users changed this long before the last run's watermark "
            "(clock skew, users changed during that run).",
        ),
    ] = 10,
    yes: YesOpt = False,
    max_deactivations: MaxDeactivationsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    batch_size: BatchSizeOpt = PAGE_LIMIT,
    concurrency: ConcurrencyOpt = DEFAULT_CONCURRENCY,
    max_rps: MaxRpsOpt = None,
    allow_instance_change: AllowInstanceChangeOpt = False,
    ping_url: PingUrlOpt = None,
    clerk_secret_key: SecretKeyOpt = None,
    database_url: DatabaseUrlOpt = None,
    clerk_api_url: ApiUrlOpt = None,
) -> None:
    """For cron, every few minutes: sync the users changed since the last run (newest first,
    a page or two), and run the full reconcile only when it is needed (users deleted in
    Clerk, or no full reconcile yet). Prints one line.

    Example: clerk-sync sync --quiet --ping-url https://hc-ping.com/<uuid>
    """
    options = SyncOptions(
        "sync",
        dry_run=dry_run,
        deactivate=True,
        page_size=batch_size,
        concurrency=concurrency,
        guard=DeactivationGuard(max_deactivations=max_deactivations),
        resume=False,
        allow_instance_change=allow_instance_change,
        incremental=True,
        overlap_s=overlap_minutes * 60,
        full=not no_full,
    )
    _run_sync(
        options,
        clerk_secret_key=clerk_secret_key,
        database_url=database_url,
        clerk_api_url=clerk_api_url,
        max_rps=max_rps,
        json_out=json_out,
        quiet=quiet,
        prompt=not yes,
        ping_url=ping_url,
    )


@app.command()
def status(
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="How many runs to show.")
    ] = 10,
    json_out: JsonOpt = False,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Show the last runs, the last successful full reconcile, the pinned Clerk instance, and
    whether a run is in progress or was left stale. Reads the database only; exits 0.

    Example: clerk-sync status --json
    """
    reporter = Reporter(json_mode=json_out)
    with handle_errors(reporter, "status"), ExitStack() as stack:
        settings = _settings(reporter, database_url=database_url)
        store = _store(stack, settings)
        reporter.status(collect_status(store, limit=limit))


@app.command()
def user(
    clerk_id: Annotated[
        str, typer.Argument(help="The Clerk user id, e.g. user_2x8kQm3VbN7pLr4TzYw1HcDeFgA.")
    ],
    apply: Annotated[bool, typer.Option("--apply", help="Sync just this user now.")] = False,
    json_out: JsonOpt = False,
    max_rps: MaxRpsOpt = None,
    allow_instance_change: AllowInstanceChangeOpt = False,
    clerk_secret_key: SecretKeyOpt = None,
    database_url: DatabaseUrlOpt = None,
    clerk_api_url: ApiUrlOpt = None,
) -> None:
    """Show one user side by side: Clerk's record, the table row, the settings row, the plan.

    Example: clerk-sync user user_2x8kQm3VbN7pLr4TzYw1HcDeFgA --apply
    """
    reporter = Reporter(json_mode=json_out)
    with handle_errors(reporter, "user"), ExitStack() as stack:
        settings = _settings(
            reporter,
            clerk_secret_key=clerk_secret_key,
            database_url=database_url,
            clerk_api_url=clerk_api_url,
        )
        client = _clerk(stack, settings, max_rps)
        store = _store(stack, settings)
        report = inspect_user(
            client, store, clerk_id, apply=apply, allow_instance_change=allow_instance_change
        )
        reporter.user_report(report)
    if not report.found:
        raise typer.Exit(int(ExitCode.DRIFT))
    if report.problem:
        raise typer.Exit(int(ExitCode.PARTIAL))


@app.command("init-db")
def init_db(
    print_sql: Annotated[
        bool, typer.Option("--print", help="Print the SQL (for Supabase's SQL editor) instead.")
    ] = False,
    json_out: JsonOpt = False,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """On a project without a users table: create the integration guide's tables and triggers.
    On every project: create or update clerk-sync's own schema (clerk_sync), then report what
    it found. Never creates, changes or drops anything in an existing app schema.

    Example: clerk-sync init-db --print > clerk-sync.sql
    """
    reporter = Reporter(json_mode=json_out)
    with handle_errors(reporter, "init-db"), ExitStack() as stack:
        if print_sql:
            reporter.sql_script(ddl.script(load_settings().tables()))
            return
        settings = _settings(reporter, database_url=database_url)
        store = _store(stack, settings)
        result = run_init_db(store)
        reporter.init_db(result, str(describe_dsn(settings.dsn())))


@app.command()
def doctor(
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="Drop the settings trigger an older init-db added beside the app's own "
            "(only one known with certainty to be clerk-sync's). Changes nothing else.",
        ),
    ] = False,
    json_out: JsonOpt = False,
    max_rps: MaxRpsOpt = None,
    clerk_secret_key: SecretKeyOpt = None,
    database_url: DatabaseUrlOpt = None,
    clerk_api_url: ApiUrlOpt = None,
) -> None:
    """Check settings, Clerk, Postgres, the users table, its triggers and clerk-sync's
    bookkeeping: one line each, with the fix. Reads only (unless --fix). Exits 2 on any ✗.

    Example: clerk-sync doctor
    """
    reporter = Reporter(json_mode=json_out)
    with handle_errors(reporter, "doctor"), ExitStack() as stack:
        settings = _settings(
            reporter,
            clerk_secret_key=clerk_secret_key,
            database_url=database_url,
            clerk_api_url=clerk_api_url,
        )
        given = {
            "CLERK_SECRET_KEY": clerk_secret_key,
            "DATABASE_URL": database_url,
            "CLERK_API_URL": clerk_api_url,
        }
        facts = Facts(setting_sources(given), env_file_warning(), None, None)
        try:
            key, _ = settings.secret_key(), settings.api_url()
        except ConfigError as exc:
            facts.setting_errors.append(exc.message)
        else:
            client = _clerk(stack, settings, max_rps, attempts=2)
            facts.clerk = ClerkFacts(key_kind(key), max_rps or default_max_rps(key))
            gather_clerk(facts.clerk, client.get_instance, client.count_users)
        try:
            dsn = settings.dsn()
        except ConfigError as exc:
            facts.setting_errors.append(exc.message)
        else:
            store = stack.enter_context(Store(lambda: connect(dsn), settings.tables()))
            facts.database = DatabaseFacts(describe_dsn(dsn))
            gather_database(facts.database, store, fix=fix)
        checks = diagnose(facts)
        ok = not failed(checks)
        reporter.doctor(checks, facts.database.fixed if facts.database else [], ok)
    if not ok:
        raise typer.Exit(int(ExitCode.CONFIG))


class CursorTies(StrEnum):
    """``--cursor-ties``: the emulator's ``CURSOR_TIES``."""

    ID = "id"
    SKIP = "skip"


class DeletedCursor(StrEnum):
    """``--deleted-cursor``: the emulator's ``DELETED_CURSOR``."""

    CONTINUE = "continue"
    UNPROCESSABLE = "422"
    NOT_FOUND = "404"
    BAD_REQUEST = "400"
    EMPTY = "empty"


@app.command()
def emulator(
    ctx: typer.Context,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="0 picks a free port.")
    ] = DEFAULT_PORT,
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    users: Annotated[int, typer.Option("--users", min=0, help="Users to generate.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same users.")] = 0,
    edge_cases: Annotated[
        bool, typer.Option("--edge-cases", help="Mix in awkward users (no email, banned, …).")
    ] = False,
    latency_ms: Annotated[
        float, typer.Option("--latency-ms", min=0, help="Delay per request.")
    ] = 0,
    deep_offset_ms: Annotated[
        float, typer.Option("--deep-offset-ms", min=0, help="Extra delay per 1000 of offset.")
    ] = 0,
    rate_limit: Annotated[
        str,
        typer.Option(
            "--rate-limit",
            help="off, production (1000/10 s), development (100/10 s) or N per 10 s.",
        ),
    ] = "off",
    throttle_every: Annotated[
        int, typer.Option("--throttle-every", min=0, help="Every Nth request answers 429.")
    ] = 0,
    fail_every: Annotated[
        int, typer.Option("--fail-every", min=0, help="Every Nth request answers 500.")
    ] = 0,
    truncate_every: Annotated[
        int, typer.Option("--truncate-every", min=0, help="Every Nth list response is cut short.")
    ] = 0,
    cursor_ties: Annotated[
        CursorTies,
        typer.Option(
            "--cursor-ties",
            help="Undocumented by Clerk: which users starting_after returns among those sharing "
            "the cursor user's created_at ms: id (those after it by id) or skip (none of them).",
        ),
    ] = CursorTies.ID,
    deleted_cursor: Annotated[
        DeletedCursor,
        typer.Option(
            "--deleted-cursor",
            help="Undocumented by Clerk: what starting_after=<a deleted user's id> answers: "
            "continue (from its place), 422, 404, 400 (Clerk's error bodies) or empty (200 []).",
        ),
    ] = DeletedCursor.CONTINUE,
    unstable_ties: Annotated[
        bool,
        typer.Option(
            "--unstable-ties",
            help="Undocumented by Clerk: under offset paging, users tied in the sort field come "
            "back in a different order on each request (no unique tie-breaker).",
        ),
    ] = False,
    secret_key: Annotated[
        str | None,
        typer.Option(
            "--secret-key",
            envvar="CLERK_SECRET_KEY",
            show_envvar=True,
            help=f"The one key it accepts [default: {DEFAULT_SECRET_KEY}]. An sk_live_ key "
            "only when given here: one in CLERK_SECRET_KEY is ignored.",
        ),
    ] = None,
    webhook_url: Annotated[
        str | None,
        typer.Option(
            "--webhook-url",
            help="POST signed user.created / user.updated / user.deleted events for the "
            "emulator's own changes (control API) to this http(s) URL, as Svix delivers Clerk's.",
        ),
    ] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(
            "--webhook-secret",
            help="Their signing secret, whsec_… [default: a random one; GET /_emulator/config "
            "shows it].",
        ),
    ] = None,
    webhook_drop: Annotated[
        float,
        typer.Option(
            "--webhook-drop", min=0, max=1, help="Probability an event is never delivered."
        ),
    ] = 0,
    webhook_duplicate: Annotated[
        float,
        typer.Option(
            "--webhook-duplicate",
            min=0,
            max=1,
            help="Probability an event is delivered twice (the same svix-id).",
        ),
    ] = 0,
    webhook_reorder: Annotated[
        bool,
        typer.Option("--webhook-reorder", help="Hold events back so later ones arrive first."),
    ] = False,
    webhook_delay_ms: Annotated[
        int, typer.Option("--webhook-delay-ms", min=0, help="Delay before each delivery.")
    ] = 0,
    webhook_retry: Annotated[
        bool,
        typer.Option(
            "--webhook-retry/--no-webhook-retry",
            help="Retry failed deliveries on Svix's schedule (5 s, 5 min, … 10 h), 1000 times "
            "faster.",
        ),
    ] = True,
    cache_mb: Annotated[
        int,
        typer.Option(
            "--cache-mb",
            min=1,
            help="Memory for users kept rendered (~2.5 KB each); the rest are rendered per "
            "request. Benchmarks at 1M users: 2600.",
        ),
    ] = 256,
) -> None:
    """Serve a local stand-in for Clerk's Backend API, for trying clerk-sync and for CI.

    Example: clerk-sync emulator --users 10000 --edge-cases --rate-limit development

    Where Clerk's docs leave an answer open (--cursor-ties, --deleted-cursor, --unstable-ties)
    the default is one plausible reading; the others let a client be tested against each.

    With --webhook-url it also sends webhooks for its changes, misbehaving as asked
    (--webhook-drop, --webhook-duplicate, --webhook-reorder, --webhook-delay-ms).
    """
    from clerk_sync_cli.emulator.server import serve  # not loaded by the other commands
    from clerk_sync_cli.scrub import register

    reporter = Reporter()
    with handle_errors(reporter, "emulator"):
        source = ctx.get_parameter_source("secret_key")
        from_env = getattr(source, "name", None) == "ENVIRONMENT"
        if from_env and secret_key and secret_key.startswith("sk_live_"):
            reporter.warn(
                "emulator: ignoring CLERK_SECRET_KEY from the environment, a live key "
                "(sk_live_…); accepting its default test key instead (--secret-key sets one)."
            )
            secret_key = None
        if not is_loopback(host):
            reporter.warn(
                f"emulator: listening on {host}, reachable beyond this machine: anyone who can "
                "reach it can read its users with its key; --host 127.0.0.1 keeps it local."
            )
        try:
            config = EmulatorConfig(
                secret_key=secret_key or DEFAULT_SECRET_KEY,
                users=users,
                seed=seed,
                edge_cases=edge_cases,
                latency_ms=latency_ms,
                deep_offset_ms_per_1000=deep_offset_ms,
                rate_limit=None if rate_limit == "off" else resolve_rate_limit(rate_limit),
                throttle_every=throttle_every,
                fail_every=fail_every,
                truncate_every=truncate_every,
                cursor_ties=cursor_ties.value,
                deleted_cursor=deleted_cursor.value,
                unstable_ties=unstable_ties,
                webhook_url=webhook_url,
                webhook_secret=webhook_secret,
                webhook_drop=webhook_drop,
                webhook_duplicate=webhook_duplicate,
                webhook_reorder=webhook_reorder,
                webhook_delay_ms=webhook_delay_ms,
                webhook_retry=webhook_retry,
                cache_bytes=cache_mb * 1024 * 1024,
            )
        except ValueError as exc:  # the messages quote neither the secret nor the URL
            raise ConfigError(f"emulator: {exc}") from None
        register(config.webhook_secret)  # never printed, whole or in part
        shown = (
            DEFAULT_SECRET_KEY
            if config.secret_key == DEFAULT_SECRET_KEY
            else key_kind(config.secret_key)
        )

        def ready(base_url: str) -> None:
            reporter.emulator_ready(base_url, shown, users)
            if config.webhook_url is None:
                return
            signed = (
                "the --webhook-secret given"
                if webhook_secret
                else "a generated secret (GET "
                f"{base_url.removesuffix('/v1')}/_emulator/config shows it as webhook_secret)"
            )
            reporter.err.print(
                f"Webhooks to {config.webhook_url}, signed with {signed}.", markup=False
            )

        try:
            serve(config, host=host, port=port, on_ready=ready)
        except OSError as exc:
            raise ConfigError(
                f"emulator: cannot listen on {host}:{port} ({exc.strerror}).",
                "Pick another --port, or 0 for a free one.",
            ) from None


@app.command()
def demo(
    users: Annotated[
        int, typer.Option("--users", min=100, help="Users in the emulated Clerk.")
    ] = 3000,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave Postgres and the emulator running afterwards.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Run the whole job on a throwaway Postgres and a local Clerk emulator; needs nothing set.

    Example: clerk-sync demo
    """
    from clerk_sync_cli.demo import demo_summary, run_demo  # not loaded by the other commands

    reporter = Reporter(json_mode=json_out, sample=5)
    with handle_errors(reporter, "demo"):
        outcome = run_demo(reporter, users=users, keep=keep)
        final = outcome.runs[-1]
        live = outcome.live
        ok = (
            all(r.status is RunStatus.OK for r in outcome.runs)
            and not final.drift
            and live.seen_after_s is not None
            and live.healed
            and live.signed_in is not None
        )
        reporter.demo_result(outcome.runs, demo_summary(outcome), ok)
    if not ok:
        raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port (0: any free).")
    ] = 8000,
    webhook_signing_secret: Annotated[
        str | None,
        typer.Option(
            "--webhook-signing-secret",
            help="Svix signing secret(s), whsec_…, space-separated. Prefer the environment "
            "(CLERK_WEBHOOK_SIGNING_SECRET) or .env: options show in the process list.",
            show_default=False,
        ),
    ] = None,
    no_signin: Annotated[
        bool,
        typer.Option(
            "--no-signin",
            help="Serve only the webhook endpoint, not the sign-in ones (/api/v1/users/…).",
        ),
    ] = False,
    database_url: DatabaseUrlOpt = None,
    secret_key: SecretKeyOpt = None,
) -> None:
    """Receive Clerk's webhooks (POST /api/webhooks/clerk) and the app's sign-in call
    (POST /api/v1/users/sync, GET /api/v1/users/profile and /settings, for the user of a
    verified Clerk session token), and write each user as every sync does. GET /healthz
    answers 200 while the database is reachable. Never takes the run lock: cron's `sync`
    heals whatever a webhook missed.

    Example: clerk-sync serve --host 0.0.0.0 --port 8000
    """
    from clerk_sync_cli import serve as server  # uvicorn and starlette: only this command
    from clerk_sync_cli.web import create_app, make_backend

    reporter = Reporter()
    with handle_errors(reporter, "serve"):
        settings = _settings(
            reporter,
            database_url=database_url,
            clerk_secret_key=secret_key,
            clerk_webhook_signing_secret=webhook_signing_secret,
        )
        backend = make_backend(settings)
        asgi = create_app(settings, signin=not no_signin, backend=backend)
        try:
            backend.target()
        except ClerkSyncError as exc:  # keep serving: /healthz says 503 until it is back
            reporter.warn(f"{exc.message} (requests are answered 503 until this is fixed)")
        sock = server.bind(host, port)
        reporter.serve_ready(host, sock.getsockname()[1], signin=not no_signin)
        server.log_to_stderr()
        server.run(asgi, sock)


def main() -> None:
    _quiet_driver()
    _tune_gc()
    app(prog_name="clerk-sync")
