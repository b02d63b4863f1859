"""The portal's ASGI app: the five pages' routers, static files, health, metrics and the request guards."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

from . import data_pages, jobs_pages, search_pages
from .backends import Backends
from .settings import PortalSettings
from .web import HERE, json_error

# Bytes a POST may carry beyond its file: the form's other fields.
FORM_OVERHEAD = 1 << 20


def create_app(settings: PortalSettings | None = None) -> FastAPI:
    settings = settings or PortalSettings()
    registry = CollectorRegistry()
    seconds = Histogram(
        "taxonstream_portal_request_seconds",
        "Portal HTTP requests by route and status",
        ["route", "status"],
        registry=registry,
        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.backends = Backends(settings)
        yield
        app.state.backends.close()

    app = FastAPI(title="taxonstream explorer", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    upload_cap = max(settings.upload_max_bytes, settings.url_list_max_bytes) + FORM_OVERHEAD

    @app.middleware("http")
    async def guard_and_time(request: Request, call_next) -> Response:
        started = time.perf_counter()
        if request.method == "POST":
            length = request.headers.get("content-length")
            # Refused before the body is read: an upload past the caps never reaches the disk.
            if length is None or not length.isdigit():
                return json_error(411, "uploads need a Content-Length")
            if int(length) > upload_cap:
                return json_error(413, f"the upload is over the {upload_cap / 2**20:.0f} MiB limit")
        elif request.method not in ("GET", "HEAD"):
            return json_error(405, f"{request.method} is not served here")
        response = await call_next(request)
        route = request.scope.get("route")
        seconds.labels(getattr(route, "path", "unmatched"), str(response.status_code)).observe(
            time.perf_counter() - started
        )
        # Pages show only the portal's own scripts and styles, and thumbnails from the object store.
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: http: https:; script-src 'self'; style-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    app.include_router(search_pages.router)
    app.include_router(data_pages.router)
    app.include_router(jobs_pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        """Liveness and readiness: the portal answers (the services' own health is /api/health)."""
        return JSONResponse({"status": "ok"})

    @app.get("/api/health")
    def health(request: Request) -> JSONResponse:
        return JSONResponse(request.app.state.backends.health())

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
