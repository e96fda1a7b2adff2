"""`python -m reops` is the `reops` command."""

from reops.cli.launch import main

main()
