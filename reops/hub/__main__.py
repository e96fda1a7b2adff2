"""`python -m reops.hub`: the hub with settings from config and REOPS_HUB_* only."""

from __future__ import annotations

import sys

from reops.control.settings import load_hub_settings
from reops.hub.daemon import HubAlreadyRunning, run_hub

try:
    run_hub(load_hub_settings(), verbose="-v" in sys.argv)
except (HubAlreadyRunning, ValueError, OSError) as e:
    print(f"reops hub: {e}", file=sys.stderr)
    raise SystemExit(2) from None
