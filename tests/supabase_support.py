"""Running the pinned Supabase CLI (package.json) offline in tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.db import REPO_ROOT

SUPABASE = REPO_ROOT / "node_modules" / ".bin" / "supabase"
CLI_TIMEOUT_S = 120


def cli_env(home: Path) -> dict[str, str]:
    """The environment with no Supabase profile or token, telemetry and update checks off,
    an empty HOME and no TLS attempt on the local server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "PG"))}
    env.update(
        HOME=str(home),
        CI="true",
        DO_NOT_TRACK="1",
        SUPABASE_TELEMETRY_DISABLED="1",
        SUPABASE_NO_UPDATE_NOTIFIER="1",
        SUPABASE_NO_KEYRING="1",
        # Local server without TLS: don't try TLS first and warn about the fallback.
        PGSSLMODE="disable",
    )
    return env


def use_cli_env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Puts :func:`cli_env` into this process's environment (for code that runs the CLI)."""
    for key in list(os.environ):
        if key.startswith(("SUPABASE_", "PG")):
            monkeypatch.delenv(key)
    for key, value in cli_env(home).items():
        monkeypatch.setenv(key, value)


def run_cli(home: Path, *args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """``supabase <args> --agent no``, offline, time-limited; the caller checks the result."""
    if not SUPABASE.exists():
        pytest.fail(f"{SUPABASE} is missing: run scripts/setup.sh (npm ci)")
    return subprocess.run(
        [str(SUPABASE), *args, "--agent", "no"],
        cwd=cwd,
        env=cli_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
