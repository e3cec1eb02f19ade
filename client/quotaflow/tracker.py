"""Tracker and AsyncTracker: estimate -> reserve -> call -> settle.

The flow of every tracked call is written once, without I/O, in :mod:`quotaflow.flow`. The
shell that runs it is written once too, async (``quotaflow/_async/tracker.py``);
``quotaflow/_sync/tracker.py`` is generated from it by ``tools/async_to_sync.py``.
"""

from __future__ import annotations

from ._async.tracker import (
    AsyncTrackedSdkManager,
    AsyncTrackedSdkStream,
    AsyncTrackedStream,
    AsyncTracker,
)
from ._sync.tracker import TrackedSdkManager, TrackedSdkStream, TrackedStream, Tracker
from .flow import DEFAULT_MAX_TOKENS, DEFAULT_RESERVATION_TTL, UsageCallback

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_RESERVATION_TTL",
    "AsyncTrackedSdkManager",
    "AsyncTrackedSdkStream",
    "AsyncTrackedStream",
    "AsyncTracker",
    "TrackedSdkManager",
    "TrackedSdkStream",
    "TrackedStream",
    "Tracker",
    "UsageCallback",
]
