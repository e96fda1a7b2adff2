"""`python -m reops` is the `reops` command."""

from reops.cli import main

main()
