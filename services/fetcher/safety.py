"""Where the fetcher may connect: public addresses only, unless an allow-list says otherwise."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from taxonstream.core.errors import Failed

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA = ipaddress.ip_address("169.254.169.254")


def check_url(url: str) -> tuple[str, int]:
    """Scheme and host sanity; returns (host, port)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise Failed("bad_url", f"malformed URL {url!r}: {error}") from error
    if parts.scheme not in {"http", "https"}:
        raise Failed("bad_url", f"only http and https URLs are fetched, not {parts.scheme or 'no scheme'!r}: {url!r}")
    if not parts.hostname:
        raise Failed("bad_url", f"URL has no host: {url!r}")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def refusal(address: Address) -> str | None:
    """Why an address is not a public one, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return refusal(address.ipv4_mapped) or None
    if address == METADATA:
        return "the cloud metadata address"
    for label, flag in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("unspecified", address.is_unspecified),
    ):
        if flag:
            return f"a {label} address"
    return None


def check_host(host: str, port: int, allowed: Sequence[Network]) -> list[Address]:
    """Resolve `host` and refuse it unless every address is public or allow-listed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise Failed("dns_error", f"cannot resolve {host!r}: {error}") from error
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        why = refusal(address)
        if why and not any(address in net for net in allowed if net.version == address.version):
            raise Failed(
                "blocked_address",
                f"{host} resolves to {address}, {why}; refused (allow it with --allow-network CIDR)",
            )
    return addresses
