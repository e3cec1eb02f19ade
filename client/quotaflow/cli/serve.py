"""``quotaflow serve``: every HTTP function on one port."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ._common import (
    CliError,
    add_command,
)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .. import server
    except ImportError as exc:
        raise CliError(
            f"the local functions server is not available ({exc}); install quotaflow[functions]"
        ) from exc
    url = (
        getattr(args, "database_url", None)
        or os.environ.get("QUOTAFLOW_DATABASE_URL")
        or os.environ.get("DATABASE_URL")
    )
    kwargs: dict[str, Any] = {"host": args.host, "database_url": url}
    if args.port is not None:
        kwargs["port"] = args.port
    server.serve(**kwargs)
    return 0


def register(sub: Any) -> None:
    p = add_command(sub, "serve", "serve every HTTP function on one port (local use)", cmd_serve)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080)")
