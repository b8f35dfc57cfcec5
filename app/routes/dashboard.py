"""The dashboard: ``/`` serves the single page, ``/static/<path>`` its CSS and JavaScript.

Plain files from ``app/static`` (no build step, nothing from the internet). The page talks to the
API like any client, so it needs no key of its own: users enter theirs in the page. The page and
its scripts are sent with ``Cache-Control: no-cache`` (revalidated by ETag), so a new deploy is
picked up on the next load.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from app.problems import Problem

STATIC = (Path(__file__).resolve().parent.parent / "static").resolve()

router = APIRouter(include_in_schema=False)

_NO_CACHE = {"Cache-Control": "no-cache"}


def _static_file(path: str) -> Path:
    """The file under ``app/static`` for ``path``, or a 404 problem (no escaping the folder)."""
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file():
        raise Problem(404, "not-found", f"no static file {path!r}")
    return target


@router.get("/", response_model=None)
async def index() -> Response:
    """The dashboard page."""
    return FileResponse(_static_file("index.html"), headers=_NO_CACHE)


@router.get("/static/{path:path}", response_model=None)
async def static(path: str) -> Response:
    """A file of the dashboard (``.js`` as JavaScript, so ES modules load)."""
    target = _static_file(path)
    media = "text/javascript" if target.suffix == ".js" else None
    return FileResponse(target, media_type=media, headers=_NO_CACHE)
