"""The one I/O primitive the shells use besides their clients: run a blocking function (the
backend, the outbox) off the event loop. Blocking code simply calls it."""

from __future__ import annotations

import asyncio  # async-only
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")


async def to_thread(fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
    return await asyncio.to_thread(fn, *args, **kwargs)  # sync: return fn(*args, **kwargs)
