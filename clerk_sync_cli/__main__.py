from clerk_sync_cli.cli import main

main()
