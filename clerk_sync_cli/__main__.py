"""The ``clerk-sync`` process (the console script, ``python -m clerk_sync_cli``).

No garbage is collected while the command's modules load: everything they allocate lives on,
and collections over it took ~35 ms of a ~290 ms start-up. :func:`clerk_sync_cli.cli.main`
turns collection back on with the thresholds a walk runs with."""

import gc


def main() -> None:
    gc.disable()
    from clerk_sync_cli.cli import main as run_command  # after gc.disable(): see above

    run_command()


if __name__ == "__main__":
    main()
