"""Who may call, on both ends: gRPC channels that carry the deployment's bearer token (and TLS), and the
server side's credentials and exposure check.

The token travels as `authorization: Bearer <token>` metadata, over TLS when a CA is configured, over
plaintext otherwise (then only the network fences it: loopback, or a NetworkPolicy). The CLI, the indexer's
calls to the detector and the embedder, and every tool make their channels here, so all send the same.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

import grpc

from taxonstream.core.settings import CoreSettings

AUTH_METADATA = "authorization"
Options = Sequence[tuple[str, object]]


class CredentialsError(ValueError):
    """A TLS or token setting that cannot be used (a missing file, a certificate without its key)."""


def bearer(token: str) -> str:
    return f"Bearer {token}"


class _TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer token to every call of a channel, whatever its kind."""

    def __init__(self, token: str) -> None:
        self.header = (AUTH_METADATA, bearer(token))

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return details._replace(metadata=[*(details.metadata or ()), self.header])  # a namedtuple in grpc

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)


def _pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CredentialsError(f"cannot read the {what} {path!r}: {error.strerror or error}") from None


def open_channel(address: str, *, token: str = "", ca_file: str = "", options: Options = ()) -> grpc.Channel:
    """A channel to `address`: TLS verified against `ca_file` when given, the token on every call when given."""
    if ca_file:
        credentials = grpc.ssl_channel_credentials(root_certificates=_pem(ca_file, "TLS CA file"))
        channel = grpc.secure_channel(address, credentials, options=list(options))
    else:
        channel = grpc.insecure_channel(address, options=list(options))
    return grpc.intercept_channel(channel, _TokenInterceptor(token)) if token else channel


def service_channel(settings: CoreSettings, address: str, options: Options = ()) -> grpc.Channel:
    """A service's channel to another service, with the credentials of its own settings."""
    return open_channel(address, token=settings.token.get_secret_value(), ca_file=settings.tls_ca, options=options)


def server_credentials(settings: CoreSettings) -> grpc.ServerCredentials | None:
    """TLS for the server when a certificate and its key are configured; None: plaintext."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise CredentialsError("TAXONSTREAM_TLS_CERT and TAXONSTREAM_TLS_KEY go together: set both or neither")
    if not settings.tls_cert:
        return None
    pair = (_pem(settings.tls_key, "TLS key"), _pem(settings.tls_cert, "TLS certificate"))
    return grpc.ssl_server_credentials([pair])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def exposure_refusal(settings: CoreSettings) -> str | None:
    """Why this server must not start (reachable beyond this machine with no token), or None."""
    if settings.token.get_secret_value() or settings.insecure or is_loopback(settings.bind_host):
        return None
    return (
        f"refusing to listen on {settings.bind_host} without a token: anyone who reaches the port could submit, "
        "cancel or delete. Set TAXONSTREAM_TOKEN (the callers send the same), or TAXONSTREAM_INSECURE=true "
        "where something else fences the port"
    )
