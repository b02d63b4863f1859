"""What every page shares: the templates, rendering with the CSRF cookie, errors as a page or as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates

from .backends import Backends
from .security import CSRF_COOKIE, csrf_value

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["pct"] = lambda value: f"{value:.1f}%"
templates.env.filters["thousands"] = lambda value: f"{value:,}"

PAGES = (
    ("search", "Search"),
    ("classify", "Classify"),
    ("dashboard", "Dashboard"),
    ("embeddings", "Embedding map"),
    ("jobs", "Jobs"),
)


def backends(request: Request) -> Backends:
    return request.app.state.backends


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page, with the CSRF value its forms carry set as a cookie (SameSite=Strict, not readable by JS)."""
    csrf = csrf_value(request)
    settings = backends(request).settings
    response = templates.TemplateResponse(
        request,
        template,
        {
            "csrf": csrf,
            "pages": PAGES,
            "page": "jobs" if template == "job.html" else template.split(".")[0],
            "token_required": bool(settings.portal_token),
            **context,
        },
        status_code=status,
    )
    response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/")
    return response


def json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
