"""`python -m reops` is the `reops` command."""

from reops.cli.main import main

main()
