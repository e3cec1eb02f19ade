"""``quotaflow demo``: the narrated offline demo of the whole system."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run

    return run(args)


def register(sub: Any) -> None:
    from ..demo import __doc__ as description
    from ..demo import add_arguments

    # Not the common options: the demo's --database-url is the server it creates its own
    # database on, with a default.
    p = sub.add_parser(
        "demo",
        help="the narrated offline demo: a fresh database, fake providers, every feature",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=cmd_demo)
