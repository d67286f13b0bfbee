"""The operator console's files, served by ingest at /console/: one HTML page, its ES modules
and styles, and the vendored Preact + htm build (from the `htm` npm package, see
docs/console.md). Nothing is fetched from elsewhere at run time; the page's only sources of
data are the /v1 API and its live stream (`/v1/stream`).

Every answer carries a strict Content-Security-Policy (scripts, styles, images and connections
from this origin only; no inline script; no framing), so an injected string cannot run.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

STATIC = Path(__file__).parent / "static"
PREFIX = "/console"

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:;"
        " connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none';"
        " form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False)


def _file(path: Path) -> Response:
    media = (
        TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )
    cache = "no-cache" if path.suffix in (".html", ".js", ".css") else "max-age=3600"
    return Response(
        path.read_bytes(), media_type=media, headers={**HEADERS, "Cache-Control": cache}
    )


@router.get(PREFIX)
async def console_root() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/", status_code=308)


@router.get(PREFIX + "/")
async def console_page() -> Response:
    return _file(STATIC / "index.html")


@router.get(PREFIX + "/{name:path}")
async def console_asset(name: str) -> Response:
    root = STATIC.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file() or path.name.startswith("."):
        raise HTTPException(404, "no such console file")
    return _file(path)
