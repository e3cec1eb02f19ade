"""The blocking I/O shells are generated from their async sources (tools/async_to_sync.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import async_to_sync  # noqa: E402


def test_the_committed_sync_modules_are_what_the_async_sources_generate() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "async_to_sync.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (ROOT / "client/quotaflow/_sync").glob("*.py")} == {
        p.name for p in (ROOT / "client/quotaflow/_async").glob("*.py")
    }


def test_the_translation_of_each_construct() -> None:
    source = """\
import asyncio  # sync: import time
class AsyncTracker(AsyncIterator[str]):
    async def __aenter__(self) -> AsyncTracker:
        await asyncio.sleep(1)  # sync: time.sleep(1)
        async for x in self._lines:
            await self.aclose()
        fn: Callable[[], Awaitable[int]]
        return x  # async-only
    # async-only: begin
    def __await__(self): ...
    # async-only: end
"""
    assert async_to_sync.translate(source) == """\
import time
class Tracker(Iterator[str]):
    def __enter__(self) -> Tracker:
        time.sleep(1)
        for x in self._lines:
            self.close()
        fn: Callable[[], int]
"""


def test_a_stale_generated_file_fails_the_check(tmp_path: Path) -> None:
    """Editing the async source without regenerating is caught."""
    with pytest.MonkeyPatch.context() as mp:
        src = tmp_path / "_async"
        dst = tmp_path / "_sync"
        src.mkdir()
        dst.mkdir()
        (src / "thing.py").write_text('"""A thing."""\n\n\nasync def f() -> int:\n    return 1\n')
        mp.setattr(async_to_sync, "SOURCE", src)
        mp.setattr(async_to_sync, "TARGET", dst)
        assert async_to_sync.main([]) == 0
        assert "def f() -> int:" in (dst / "thing.py").read_text()
        assert async_to_sync.main(["--check"]) == 0
        (src / "thing.py").write_text('"""A thing."""\n\n\nasync def f() -> int:\n    return 2\n')
        assert async_to_sync.main(["--check"]) == 1
