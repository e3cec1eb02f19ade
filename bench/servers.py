"""The fake provider and the functions server, each in its own process (so neither shares a
GIL with the load the bench generates), stopped when the ``with`` block ends."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import IO

import httpx

from bench.common import REPO_ROOT

# What the fake provider reports for every call: the usage the tracker prices.
INPUT_TOKENS = 1000
OUTPUT_TOKENS = 180
PROVIDER_KEYS = {"OPENAI_API_KEY": "bench", "ANTHROPIC_API_KEY": "bench",
                 "GEMINI_API_KEY": "bench", "XAI_API_KEY": "bench"}


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held together while picked, so none repeats)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def provider_env(fake_url: str) -> dict[str, str]:
    """Environment pointing every provider adapter at the fake provider."""
    return {
        "QUOTAFLOW_OPENAI_BASE_URL": f"{fake_url}/v1",
        "QUOTAFLOW_XAI_BASE_URL": f"{fake_url}/v1",
        "QUOTAFLOW_ANTHROPIC_BASE_URL": fake_url,
        "QUOTAFLOW_GOOGLE_BASE_URL": fake_url,
        **PROVIDER_KEYS,
    }


def _wait_ready(name: str, proc: subprocess.Popen[str], log: IO[str], url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{name} exited:\n{log.read()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer at {url} within 60 s")
        time.sleep(0.1)


@contextmanager
def servers(database_url: str) -> Iterator[tuple[str, tuple[str, str]]]:
    """The fake provider (``python -m quotaflow.testing.fake_provider``) and every HTTP function
    (``quotaflow.server.serve``, with a service-role key and the fake provider as its
    providers), started together; yields (fake provider URL, (functions URL, key))."""
    fake_port, functions_port = free_ports(2)
    fake = f"http://127.0.0.1:{fake_port}"
    functions = f"http://127.0.0.1:{functions_port}"
    key = "bench-service-role-" + secrets.token_hex(16)
    serve = (
        "import sys; from quotaflow.server import serve; "
        "serve('127.0.0.1', int(sys.argv[1]), sys.argv[2], quiet=True, "
        "config={'SUPABASE_SERVICE_ROLE_KEY': sys.argv[3]})"
    )
    specs = [
        ("fake provider", f"{fake}/",
         ["-m", "quotaflow.testing.fake_provider", "--port", str(fake_port),
          "--input-tokens", str(INPUT_TOKENS), "--output-tokens", str(OUTPUT_TOKENS)], {}),
        ("functions server", f"{functions}/functions/v1/health",
         ["-c", serve, str(functions_port), database_url, key], provider_env(fake)),
    ]
    with ExitStack() as stack:
        started = []
        for name, ready_url, args, env in specs:
            # A file, not a pipe: a chatty server must never block on a full pipe.
            log = stack.enter_context(tempfile.TemporaryFile("w+"))
            proc = subprocess.Popen([sys.executable, *args], env={**os.environ, **env},
                                    cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log,
                                    text=True)
            stack.callback(_stop, proc)
            started.append((name, proc, log, ready_url))
        for name, proc, log, ready_url in started:
            _wait_ready(name, proc, log, ready_url)
        yield fake, (functions, key)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
