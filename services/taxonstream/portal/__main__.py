"""`python -m taxonstream.portal`: the explorer on TAXONSTREAM_PORTAL_PORT (24080), loopback unless told."""

from __future__ import annotations

import logging
import sys

import uvicorn

from taxonstream.core.channels import is_loopback
from taxonstream.core.logs import configure

from .app import create_app
from .settings import PortalSettings

log = logging.getLogger("taxonstream.portal")


def main() -> int:
    settings = PortalSettings()
    configure("portal", settings.log_level)
    if not (is_loopback(settings.bind_host) or settings.portal_token or settings.portal_allow_without_token):
        print(
            f"portal: refusing to listen on {settings.bind_host} without TAXONSTREAM_PORTAL_TOKEN: anyone who reaches "
            "the port could start or cancel jobs. Set the token, or TAXONSTREAM_PORTAL_ALLOW_WITHOUT_TOKEN=true "
            "where something else (an authenticating Ingress) fences the port",
            file=sys.stderr,
        )
        return 2
    log.info("portal listening", extra={"address": f"http://{settings.bind_host}:{settings.portal_port}"})
    uvicorn.run(
        create_app(settings),
        host=settings.bind_host,
        port=settings.portal_port,
        log_config=None,  # the core's JSON log lines, not uvicorn's own format
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_seconds),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
