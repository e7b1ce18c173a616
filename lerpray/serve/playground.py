"""The playground: GET /playground, a page served by the app itself to try mixes in a browser.

Plain HTML, CSS and JavaScript shipped in the package (lerpray/serve/static/): no build step, nothing fetched from
anywhere else, so it works offline. The page reads GET /v1/models (attributes and poles, extrapolation bounds,
presets, the max_tokens cap) and calls /v1/completions and /v1/chat/completions with `stream: true` like any other
client, sending the API key the user types (kept in sessionStorage) as a bearer token. The page itself is served
without a key: it holds no data, and every call it makes is authorised like any other.
"""

from __future__ import annotations

import functools
from importlib import resources

from fastapi.responses import JSONResponse, Response

from lerpray.serve import errors

__all__ = ["ASSETS", "asset"]

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
}
# Only this origin: a page that tried to load anything from elsewhere would show it at once (and fail offline).
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def asset(name: str) -> Response:
    """One of the page's files, or OpenAI's 404 error body for any other name."""
    media_type = ASSETS.get(name)
    if media_type is None:
        err = errors.not_found(f"/playground/{name[:64]}")
        return JSONResponse(err.json(), status_code=err.status)
    return Response(_read(name), media_type=media_type, headers=_HEADERS)


@functools.cache
def _read(name: str) -> bytes:
    return (resources.files("lerpray.serve") / "static" / name).read_bytes()
