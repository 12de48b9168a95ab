"""Running the app for one request, shared by the HTTP/1.1 and HTTP/2 protocols."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from meshgate.http.errors import HTTPError
from meshgate.http.messages import Request, Response, error_response, new_request_id
from meshgate.observability.accesslog import AccessEntry

if TYPE_CHECKING:
    from meshgate.io.server import HttpServer

log = logging.getLogger("meshgate.server")


async def run_app(server: HttpServer, request: Request, entry: AccessEntry | None) -> Response:
    """The app's answer to ``request`` (through the access log's entry when there is
    one); an error the app lets out becomes the error response it means (or 500)."""
    try:
        if entry is None:
            return await server.app(request)
        logging_app = server.logging_app
        assert logging_app is not None  # (the access log is the app's)
        return await logging_app(request, entry)
    except HTTPError as exc:  # e.g. the body broke while the app read it
        return error_response(exc.status, exc.detail, new_request_id())
    except Exception:
        log.exception("unhandled error answering %s %s", request.method, request.path)
        return error_response(500, "internal error", new_request_id())
