"""A local server for every HTTP function on one port, in Supabase's layout
``/functions/v1/<name>``, so ``create_client(url, key).functions.invoke("execute", ...)`` and
:class:`~quotaflow.backends.HttpBackend` work against it unchanged.

Each target of :mod:`quotaflow.server.targets` is its functions-framework app —
``functions_framework.create_app(target, source)``, exactly what ``functions-framework
--target=<name>`` deploys (the source is a packaged one-line shim re-exporting the targets, or
``source=`` — e.g. an app's own ``functions/main.py``) — mounted under its path with werkzeug's
``DispatcherMiddleware``.
The OpenAPI document is also at ``/functions/v1/openapi.json``.

    serve("127.0.0.1", 8080, "postgresql://...")              # blocks (quotaflow serve)

    with LocalServer(database_url=url, config={"SUPABASE_JWT_SECRET": secret}) as server:
        httpx.get(server.url + "/functions/v1/health")           # a thread, an ephemeral port

Settings go to every target's Flask config (``QUOTAFLOW_DATABASE_URL`` from
``database_url``, plus ``config``: ``SUPABASE_SERVICE_ROLE_KEY``, ``SUPABASE_JWT_SECRET``,
``SUPABASE_JWKS_URL``, ...); what is not given there comes from the environment.

The server is werkzeug's threaded development server: for local use, tests and demos. In
production deploy the targets (Cloud Run functions, any WSGI server over
``functions_framework.create_app``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .._resources import path_of
from ..errors import ConfigurationError

__all__ = [
    "DEFAULT_PORT",
    "FUNCTIONS_PREFIX",
    "LocalServer",
    "create_wsgi_app",
    "find_source",
    "serve",
    "target_names",
]

FUNCTIONS_PREFIX = "/functions/v1"
DEFAULT_PORT = 8080


def target_names(source: str | os.PathLike[str] | None = None) -> list[str]:
    """The targets the functions source declares, in declaration order."""
    import functions_framework

    from . import http

    functions_framework.create_app("health", str(find_source(source)))  # type: ignore[no-untyped-call]
    return list(http.TARGETS)


def find_source(source: str | os.PathLike[str] | None = None) -> Path:
    """The file functions-framework loads: ``source`` (a ``main.py`` or its folder), else
    ``QUOTAFLOW_FUNCTIONS_SOURCE``, else the packaged shim that re-exports every target."""
    given = source if source is not None else os.environ.get("QUOTAFLOW_FUNCTIONS_SOURCE")
    if not given:
        return path_of("server", "_functions", "main.py")
    path = Path(given)
    if path.is_dir():
        path = path / "main.py"
    if not path.is_file():
        raise ConfigurationError(
            f"functions source not found: {path} (pass source= or QUOTAFLOW_FUNCTIONS_SOURCE)"
        )
    return path.resolve()


def _settings(database_url: str | None, config: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = dict(config or {})
    if database_url:
        settings["QUOTAFLOW_DATABASE_URL"] = database_url
    return settings


def _not_found(names: list[str]) -> Any:
    """The app behind every unmounted path: a listing at ``/functions/v1``, else 404."""

    def wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        body: dict[str, Any]
        if path.rstrip("/") == FUNCTIONS_PREFIX:
            status = "200 OK"
            body = {
                "functions": [f"{FUNCTIONS_PREFIX}/{name}" for name in names],
                "openapi": f"{FUNCTIONS_PREFIX}/openapi.json",
            }
        else:
            status = "404 Not Found"
            body = {"error": {"code": "not_found", "message": f"no function at {path}"}}
        data = json.dumps(body).encode()
        start_response(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        )
        return [data]

    return wsgi


def _rooted(app: Any) -> Any:
    """The mounted app sees ``/`` for its own path (not ``""``, which Flask redirects)."""

    def wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not environ.get("PATH_INFO"):
            environ["PATH_INFO"] = "/"
        return app(environ, start_response)  # type: ignore[no-any-return]

    return wsgi


def create_wsgi_app(
    *,
    source: str | os.PathLike[str] | None = None,
    database_url: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Any:
    """A WSGI app serving every target under ``/functions/v1/<name>``."""
    import functions_framework
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    path = str(find_source(source))
    settings = _settings(database_url, config)
    names = target_names(path)
    mounts: dict[str, Any] = {}
    for name in names:
        app = functions_framework.create_app(name, path)  # type: ignore[no-untyped-call]
        app.config.update(settings)
        mounts[f"{FUNCTIONS_PREFIX}/{name}"] = _rooted(app)
    if "openapi" in names:
        mounts[f"{FUNCTIONS_PREFIX}/openapi.json"] = mounts[f"{FUNCTIONS_PREFIX}/openapi"]
    return DispatcherMiddleware(_not_found(names), mounts)


def _close_runtimes() -> None:
    """Closes the functions' connection pools."""
    from . import http

    http.close_runtimes()


class LocalServer:
    """The functions on ``host:port`` (0: an ephemeral port) in a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        database_url: str | None = None,
        source: str | os.PathLike[str] | None = None,
        config: Mapping[str, Any] | None = None,
        quiet: bool = True,
    ) -> None:
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Handler(WSGIRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                if not quiet:
                    super().log_request(code, size)

        app = create_wsgi_app(source=source, database_url=database_url, config=config)
        self._server = make_server(host, port, app, threaded=True, request_handler=Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """``http://host:port``: what ``create_client`` and ``HttpBackend`` take."""
        host = self._server.server_address[0]
        if isinstance(host, bytes):
            host = host.decode()
        return f"http://{host}:{self.port}"

    @property
    def functions_url(self) -> str:
        return self.url + FUNCTIONS_PREFIX

    def start(self) -> LocalServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"quotaflow-functions-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serves in this thread until interrupted."""
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()
            _close_runtimes()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        _close_runtimes()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    database_url: str | None = None,
    *,
    source: str | os.PathLike[str] | None = None,
    config: Mapping[str, Any] | None = None,
    quiet: bool = False,
) -> None:
    """Serves every function on ``host:port`` until interrupted (``quotaflow serve``)."""
    server = LocalServer(
        host, port, database_url=database_url, source=source, config=config, quiet=quiet
    )
    print(f"quotaflow functions on {server.functions_url}/<name>", flush=True)
    print(f"  OpenAPI document: {server.functions_url}/openapi.json", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
