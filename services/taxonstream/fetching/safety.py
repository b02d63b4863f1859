"""Where the fetcher may connect: public addresses only, unless an allow-list says otherwise.

The check and the connection are one step (`connect_checked`): the socket goes to the very address that
was checked, so a DNS answer that changes between check and connect cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

import urllib3
import urllib3.connection
import urllib3.exceptions

from taxonstream.core.errors import Failed

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA = ipaddress.ip_address("169.254.169.254")


def host_of(url: str) -> str:
    """The URL's host, lower-cased ("" for a malformed URL): the unit of politeness and the partition key."""
    try:
        return (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:
        return ""


def check_url(url: str) -> tuple[str, int]:
    """Scheme and host sanity; returns (host, port)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in url.strip()):
        raise Failed("bad_url", f"URL contains control characters: {url!r}")
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
    if isinstance(address, ipaddress.IPv6Address):
        # IPv4 carried inside IPv6 (mapped, 6to4, Teredo) is judged by the IPv4 address it reaches.
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo and address.teredo[1])
        if embedded:
            return refusal(embedded)
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
    if not address.is_global:  # the rest of IANA's special-purpose ranges, e.g. 100.64.0.0/10 (carrier NAT)
        return "a special-purpose (non-global) address"
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


def connect_checked(
    host: str, port: int, timeout: float | None, allowed: Sequence[Network], options: Sequence[tuple] = ()
) -> socket.socket:
    """Resolve once, check every address, then connect to a checked address — never by name.

    Connecting by name would resolve a second time, and a DNS answer that changes in between (rebinding)
    could steer the connection to an address that was never checked.
    """
    addresses = check_host(host, port, allowed)
    last: OSError | None = None
    for address in addresses:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            for option in options:
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            sock.connect((str(address), port))
            return sock
        except OSError as error:
            sock.close()
            last = error
    raise last or OSError(f"no address to connect to for {host}")


def _pinned(base: type, allowed: tuple[Network, ...]) -> type:
    """A urllib3 connection class whose sockets go only to addresses `check_host` accepted.

    TLS still verifies the certificate against the host name (urllib3 uses `self.host` for SNI and
    hostname checks), and the Host header still names the host: only the socket's target is pinned.
    """

    def _new_conn(self) -> socket.socket:  # replaces urllib3's resolve-and-connect
        try:
            return connect_checked(self._dns_host, self.port, self.timeout, allowed, self.socket_options or ())
        except TimeoutError as error:
            raise urllib3.exceptions.ConnectTimeoutError(self, f"connecting to {self.host} timed out") from error
        except OSError as error:
            raise urllib3.exceptions.NewConnectionError(self, f"cannot connect to {self.host}: {error}") from error

    return type(f"Pinned{base.__name__}", (base,), {"_new_conn": _new_conn})


def pinned_pool_manager(allowed: Sequence[Network], per_host: int, hosts: int = 512) -> urllib3.PoolManager:
    """A pool manager that connects only to checked addresses (see `connect_checked`)."""
    networks = tuple(allowed)
    manager = urllib3.PoolManager(num_pools=hosts, maxsize=per_host, block=False, retries=False)
    manager.pool_classes_by_scheme = {
        "http": type(
            "PinnedHTTPConnectionPool",
            (urllib3.HTTPConnectionPool,),
            {"ConnectionCls": _pinned(urllib3.connection.HTTPConnection, networks)},
        ),
        "https": type(
            "PinnedHTTPSConnectionPool",
            (urllib3.HTTPSConnectionPool,),
            {"ConnectionCls": _pinned(urllib3.connection.HTTPSConnection, networks)},
        ),
    }
    return manager
