"""`python -m reops_agent` is the same as the `reops-agent` script."""

from reops_agent.cli import main

raise SystemExit(main())
