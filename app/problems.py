"""RFC 9457 problem details (``application/problem+json``) for every error the API returns."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://tivis.dev/problems/"
log = logging.getLogger("tivis.api")

_UNION_TAGS = {"int", "str", "float", "bool", "list", "dict", "none"}


class Problem(Exception):
    """An HTTP error as problem details; raise it from routes only."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        self.headers = headers
        self.extra = extra


def problem_response(
    request: Request,
    status: int,
    kind: str,
    detail: str,
    *,
    title: str | None = None,
    errors: Sequence[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + kind,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors is not None:
        body["errors"] = list(errors)
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def new_error_id() -> str:
    """An id that ties a generic error answer to its log line."""
    return uuid.uuid4().hex[:16]


def field_name(loc: Sequence[int | str]) -> str:
    """``("body", "optimizer", "lr")`` -> ``optimizer.lr``; list indexes as ``targets[0]``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        where = parts.pop(0)
        if where != "body" and not parts:
            return str(where)
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif "[" in p or p in _UNION_TAGS or p.startswith("function-"):
            continue  # pydantic's union / validator tags, not fields
        else:
            out += ("." if out else "") + p
    return out or "body"


def validation_errors(errs: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic errors as ``[{field, message, type}]``, one per field (first message wins)."""
    seen: dict[str, dict[str, Any]] = {}
    for e in errs:
        name = field_name(e.get("loc", ()))
        msg = str(e.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        seen.setdefault(name, {"field": name, "message": msg, "type": e.get("type")})
    return list(seen.values())


def install(app: FastAPI) -> None:
    """Make every error of ``app`` problem+json: our own, FastAPI's validation, 404s, 500s."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(
            request, exc.status, exc.kind, exc.detail, title=exc.title, errors=exc.errors,
            headers=exc.headers, **exc.extra,
        )  # fmt: skip

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError | ValidationError)
        errors = validation_errors(exc.errors())
        fields = ", ".join(e["field"] for e in errors)
        return problem_response(
            request, 422, "validation", f"invalid request: {fields}", errors=errors,
            title="Request validation failed",
        )  # fmt: skip

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = {404: "not-found", 405: "method-not-allowed", 408: "body-timeout",
                413: "body-too-large"}.get(exc.status_code, "http-error")  # fmt: skip
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return problem_response(
            request, exc.status_code, kind, detail, headers=getattr(exc, "headers", None)
        )

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        error_id = new_error_id()
        log.exception("unhandled error", extra={"path": request.url.path, "error_id": error_id})
        return problem_response(
            request, 500, "internal", f"internal error; the server log has it as {error_id}",
            error_id=error_id,
        )  # fmt: skip

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_error)
