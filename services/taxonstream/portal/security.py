"""Safe by default: no state change on GET, a CSRF check on every POST, a token for job changes.

CSRF: a double-submit cookie. Every page sets a random `portal_csrf` cookie (SameSite=Strict) and puts the
same value in its forms; a POST whose form field or `X-CSRF-Token` header does not equal the cookie is
refused. Another site can make the browser send the cookie but cannot read it to fill the field.
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import Request

CSRF_COOKIE = "portal_csrf"
CSRF_HEADER = "x-csrf-token"


class Forbidden(PermissionError):
    """A request refused for what it lacks (a CSRF value, the token); the message says which."""


def csrf_value(request: Request) -> str:
    """The browser's CSRF value, or a new one (set as a cookie by the page that renders it)."""
    return request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)


def check_csrf(request: Request, submitted: str | None) -> None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = submitted or request.headers.get(CSRF_HEADER, "")
    if not cookie or not given or not hmac.compare_digest(cookie, given):
        raise Forbidden("this form has expired or came from another site: reload the page and send it again")


def check_token(request: Request, configured: str, submitted: str | None) -> None:
    """Job submission, retry and cancel need TAXONSTREAM_PORTAL_TOKEN when one is configured."""
    if not configured:
        return
    bearer = request.headers.get("authorization", "")
    given = submitted or (bearer[7:] if bearer.lower().startswith("bearer ") else "")
    if not given or not hmac.compare_digest(configured.encode(), given.encode()):
        raise Forbidden("starting, retrying or cancelling jobs needs the portal's token (TAXONSTREAM_PORTAL_TOKEN)")
