"""`make ui`: `dagster dev` on the reference code location, with a Dagster home that works.

Which home (the first that applies):
1. `$DAGSTER_HOME`, when set;
2. the demo's instance, `.gravity/demo_home`, when `make demo` has run (with the demo's
   sites file as `$GRAVITY_SITES`, unless that is set), so the UI shows the demo's runs;
3. `.dagster_home` in the project root.
A home that does not exist yet is created, with a `dagster.yaml` that turns telemetry off; an
existing `dagster.yaml` is left as it is.

    python -m pipelines.ui [--port 3000] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Mapping

from pipelines.demo import DEMO_HOME_DIR, DEMO_SITES_FILE

DEFAULT_HOME_DIR = Path(".dagster_home")
TELEMETRY_OFF = "telemetry:\n  enabled: false\n"


class UiSetupError(ValueError):
    """A setting of `make ui` that cannot work; the message names it and what was expected."""


def choose_environment(root: Path, env: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The environment `dagster dev` gets, and a line saying which home it uses and why."""
    out = dict(env)
    if env.get("DAGSTER_HOME"):
        home, why = Path(env["DAGSTER_HOME"]), "DAGSTER_HOME"
    elif (root / DEMO_HOME_DIR / "dagster.yaml").is_file():
        home, why = root / DEMO_HOME_DIR, "the demo's instance (make demo)"
        sites = root / DEMO_SITES_FILE
        if not env.get("GRAVITY_SITES") and sites.is_file():
            out["GRAVITY_SITES"] = str(sites)  # the demo's assets live under its own storage root
    else:
        home, why = root / DEFAULT_HOME_DIR, "the project's own home"
    home = home if home.is_absolute() else root / home
    ensure_home(home)
    out["DAGSTER_HOME"] = str(home)
    out.pop("DAGSTER_IS_DEV_CLI", None)  # set by an enclosing `dagster dev`; not ours
    return out, f"DAGSTER_HOME={home} ({why}); GRAVITY_SITES={out.get('GRAVITY_SITES', './sites.yaml')}"


def ensure_home(home: Path) -> None:
    if home.exists() and not home.is_dir():
        raise UiSetupError(f"DAGSTER_HOME is {str(home)!r}, which is a file; expected a directory (or a path to create one at)")
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(TELEMETRY_OFF)


def parse_port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise UiSetupError(f"the port (make ui PORT=..., or --port) is {value!r}; expected a TCP port number from 1 to 65535")
    return port


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="dagster dev on the reference code location")
    parser.add_argument("--port", default="3000", help="the webserver's port (make ui PORT=...)")
    parser.add_argument("--host", default="127.0.0.1", help="the address it listens on (make ui HOST=...)")
    args = parser.parse_args(argv)
    root = Path.cwd()
    try:
        port = parse_port(args.port)
        env, where = choose_environment(root, os.environ)
    except UiSetupError as err:
        print(f"make ui: {err}", file=sys.stderr)
        return 2
    print(f"make ui: {where}; http://{args.host}:{port}", flush=True)
    dagster = str(Path(sys.executable).with_name("dagster"))
    # exec: dagster dev stays in this process (and its process group), so Ctrl-C stops it all
    os.execve(dagster, [dagster, "dev", "-w", str(root / "workspace.yaml"), "-h", args.host, "-p", str(port)], env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
