"""The async sources of the I/O shells; ``quotaflow._sync`` is generated from them by
``tools/async_to_sync.py``. The logic without I/O lives outside both (``quotaflow.flow``,
``quotaflow.providers._core``)."""
