"""The `reops` command (its script and `python -m reops`): decides, before click or any
of a run's machinery is imported, whether the one-shot path serves this command line.

`reops exec --via agent SELECTOR -- CMD` with only the flags `reops.cli.quick` serves runs
there: one blocking request to the hub, nothing else loaded (issue 13: ≤ 0.12 s whole
process on 50 agents). Anything else, and everything with REOPS_CLI_QUICK=0, is the click
CLI (`reops.cli.main:main`) exactly as before. REOPS_CLI_QUICK_TRACE=FILE writes which path
ran and the modules it loaded to FILE at exit (tests, benchmarks).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run `reops` with this process's argv."""
    argv = sys.argv[1:]
    if argv[:1] == ["exec"] and os.environ.get("REOPS_CLI_QUICK", "1") != "0":
        try:
            from reops.cli import quick

            plan = quick.parse(argv)
            code = quick.run(plan) if plan is not None else None
        except KeyboardInterrupt as e:  # outside the call itself: as the click CLI says it
            _trace("quick")
            if type(e).__name__ == "Terminated":  # SIGTERM (reops.cli.quick)
                sys.stderr.write("reops: terminated (SIGTERM)\n")
                sys.exit(143)
            sys.stderr.write("reops: interrupted\n")
            sys.exit(130)
        if code is not None:
            _trace("quick")
            sys.exit(code)
    _trace("full")
    from reops.cli.main import main as click_main

    click_main()


def _trace(path: str) -> None:
    """With REOPS_CLI_QUICK_TRACE=FILE: at exit, write which path ran and its modules."""
    target = os.environ.get("REOPS_CLI_QUICK_TRACE")
    if not target:
        return
    import atexit

    def write() -> None:
        with open(target, "w") as f:
            f.write(" ".join([path, *sorted(sys.modules)]) + "\n")

    atexit.register(write)


if __name__ == "__main__":  # pragma: no cover
    main()
