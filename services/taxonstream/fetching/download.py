"""One safe download: every connection pinned to a checked address, redirects bounded, bytes capped while streaming.

urllib3 (over http.client) rather than httpx: on loopback with 100 KB images it spends about a third of
the CPU per response that httpx/httpcore (h11) does, and on two cores CPU is the budget.
"""

from __future__ import annotations

import http.client
import re
import time
import zlib
from dataclasses import dataclass, field
from urllib.parse import urljoin

import urllib3
import urllib3.exceptions

from taxonstream.core.errors import Failed
from taxonstream.fetching.attempts import status_failure, transport_failure
from taxonstream.fetching.safety import check_url, pinned_pool_manager
from taxonstream.fetching.settings import FetcherSettings
from taxonstream.fetching.validate import SNIFF_BYTES, check_head

REDIRECTS = {301, 302, 303, 307, 308}
CHUNK = 64 * 1024
# A non-200 body is read only this far (to keep the connection); beyond it the connection is dropped.
DISCARD_LIMIT = 64 * 1024
DISCARD_SECONDS = 0.2
DIRECTIVE_WITH_VALUE = re.compile(r"^(max-snippet|max-image-preview|max-video-preview|unavailable_after)$")


@dataclass(frozen=True)
class Downloaded:
    data: bytes
    final_url: str
    content_type: str = ""
    redirects: int = 0
    # Seconds from sending the request to the first response byte of the final hop.
    latency: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class Downloader:
    def __init__(self, settings: FetcherSettings) -> None:
        self.settings = settings
        self.allowed = settings.allowed_networks()
        self.headers = {
            "User-Agent": settings.user_agent(),
            "Accept": "image/*,*/*;q=0.5",
            # Originals are wanted byte for byte; compressing images gains nothing.
            "Accept-Encoding": "identity",
        }
        self.agent_token = settings.fetch_user_agent.split("/")[0].split()[0].lower()
        self.optout = settings.optout_directives()
        # Idle connections kept per host. The per-host limit on connections in use is the politeness
        # gate's; this only has to be large enough that the pool never discards them (e.g. a CDN that many
        # hosts redirect to).
        keep = max(settings.fetch_max_connections, settings.fetch_concurrency)
        self.pool = pinned_pool_manager(self.allowed, per_host=keep)

    def fetch(self, url: str, expect_image: bool = True, max_bytes: int | None = None) -> Downloaded:
        """GET `url` following redirects; raises Failed (final) or RetryLater (another attempt may work).

        `expect_image` rejects a body from its first bytes when it cannot be an image, and applies the
        X-Robots-Tag opt-outs; robots.txt is fetched with it off.
        """
        deadline = time.monotonic() + self.settings.fetch_total_timeout
        current = url
        for hop in range(self.settings.fetch_max_redirects + 1):
            check_url(current)
            started = time.monotonic()
            response = self._request(current, deadline)
            latency = time.monotonic() - started
            try:
                status = response.status
                if status in REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise Failed("bad_redirect", f"HTTP {status} without a Location header")
                    current = urljoin(current, location.strip())
                    continue
                if status != 200:  # final or worth another attempt: the attempt policy says which
                    raise status_failure(status, current, response.headers.get("retry-after"))
                if expect_image:
                    self._check_robots_tag(response)
                data = self._read_capped(response, deadline, expect_image, max_bytes or self.settings.fetch_max_bytes)
                headers = {k.lower(): v for k, v in response.headers.items()}
                return Downloaded(data, current, headers.get("content-type", ""), hop, latency, headers)
            finally:
                self._finish(response)
        raise Failed("too_many_redirects", f"more than {self.settings.fetch_max_redirects} redirects from {url}")

    def _request(self, url: str, deadline: float) -> urllib3.BaseHTTPResponse:
        remaining = max(0.001, deadline - time.monotonic())
        timeout = urllib3.Timeout(
            connect=min(self.settings.fetch_connect_timeout, remaining),
            read=min(self.settings.fetch_read_timeout, remaining),
        )
        try:
            return self.pool.urlopen(
                "GET",
                url,
                headers=self.headers,
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                timeout=timeout,
            )
        except (urllib3.exceptions.LocationValueError, ValueError, UnicodeError) as error:
            raise Failed("bad_url", f"{url!r}: {error}") from error
        except urllib3.exceptions.HTTPError as error:
            raise _transport_failure(error, url) from error
        except http.client.HTTPException as error:
            raise Failed("bad_response", f"{type(error).__name__} from {url}: {error}") from error

    def _check_robots_tag(self, response: urllib3.BaseHTTPResponse) -> None:
        """X-Robots-Tag opt-outs (e.g. noai), read from the headers before any of the body is."""
        if not self.optout:
            return
        for value in response.headers.getlist("x-robots-tag"):
            agent, _, rest = value.partition(":")
            agent = agent.strip().lower()
            # "otherbot: noai" speaks to another crawler; "max-snippet: 10" is a directive, not an agent.
            if rest and re.fullmatch(r"[a-z0-9_.-]+", agent) and not DIRECTIVE_WITH_VALUE.match(agent):
                if agent not in (self.agent_token, "*"):
                    continue
                directives = rest
            else:
                directives = value
            found = {d.strip().lower() for d in directives.split(",")} & self.optout
            if found:
                raise Failed("opted_out", f"X-Robots-Tag {value!r} opts this image out ({', '.join(sorted(found))})")

    def _read_capped(self, response: urllib3.BaseHTTPResponse, deadline: float, expect_image: bool, cap: int) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.strip().isdigit() and int(declared) > cap:
            raise Failed("too_large", f"Content-Length {declared} exceeds the {cap}-byte cap")
        decoder = _decoder(response.headers.get("content-encoding", ""))
        chunks: list[bytes] = []
        size = 0
        sniffed = not expect_image
        try:
            while True:
                raw = response.read1(CHUNK, decode_content=False)
                if decoder is not None:
                    # max_length bounds what one chunk may expand to: a gzip bomb stops at the cap.
                    chunk = decoder.decompress(raw, cap + 1 - size) if raw else decoder.flush()
                    if decoder.unconsumed_tail:
                        raise Failed("too_large", f"the decoded body exceeds the {cap}-byte cap")
                else:
                    chunk = raw
                size += len(chunk)
                if size > cap:
                    raise Failed("too_large", f"body exceeds the {cap}-byte cap")
                if chunk:
                    chunks.append(chunk)
                if not sniffed and (size >= SNIFF_BYTES or not raw):
                    sniffed = True
                    if size:
                        check_head(b"".join(chunks)[:512])
                if not raw:
                    break
                if time.monotonic() > deadline:
                    raise Failed("timeout", f"download took longer than {self.settings.fetch_total_timeout:g} s")
        except urllib3.exceptions.HTTPError as error:
            raise _transport_failure(error, "the body") from error
        except http.client.HTTPException as error:
            raise transport_failure(Failed("incomplete_body", f"the body ended early: {error}")) from error
        except zlib.error as error:
            raise Failed("bad_encoding", f"the body's Content-Encoding does not decode: {error}") from error
        return b"".join(chunks)

    def _finish(self, response: urllib3.BaseHTTPResponse) -> None:
        """Give the connection back if its body is (or quickly can be) read to the end; otherwise drop it."""
        try:
            limit, until = DISCARD_LIMIT, time.monotonic() + DISCARD_SECONDS
            while not response.closed:  # even an empty body must be read for http.client to finish it
                chunk = response.read1(CHUNK, decode_content=False)
                limit -= len(chunk)
                if not chunk:
                    break
                if limit < 0 or time.monotonic() > until:
                    response.close()  # a long (maybe endless) body: this connection is not reused
                    break
            response.release_conn()
        except Exception:  # noqa: BLE001 - cleanup must not mask the outcome
            response.close()
            response.release_conn()

    def close(self) -> None:
        self.pool.clear()


def _decoder(encoding: str) -> zlib._Decompress | None:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise Failed("bad_encoding", f"unsupported Content-Encoding {encoding!r} (identity was asked for)")


def _transport_failure(error: urllib3.exceptions.HTTPError, where: str) -> Exception:
    """Name urllib3's errors; the attempt policy says which of them another attempt may cure."""
    return transport_failure(_name_transport_failure(error, where))


def _name_transport_failure(error: urllib3.exceptions.HTTPError, where: str) -> Failed:
    if isinstance(error, urllib3.exceptions.NewConnectionError):  # a subclass of the timeout error, sadly
        return Failed("connection_error", f"cannot connect for {where}: {error}")
    if isinstance(error, urllib3.exceptions.TimeoutError):
        return Failed("timeout", f"{type(error).__name__} reading {where}")
    if isinstance(error, urllib3.exceptions.SSLError):
        return Failed("tls_error", f"TLS failed for {where}: {error}")
    if isinstance(error, urllib3.exceptions.LocationValueError):
        return Failed("bad_url", f"{where}: {error}")
    cause = error.args[1] if isinstance(error, urllib3.exceptions.ProtocolError) and len(error.args) > 1 else None
    if isinstance(cause, http.client.IncompleteRead) or isinstance(error, urllib3.exceptions.IncompleteRead):
        return Failed("incomplete_body", f"the connection closed before the body was complete ({where})")
    if isinstance(cause, http.client.HTTPException) and not isinstance(cause, http.client.RemoteDisconnected):
        return Failed("bad_response", f"not a valid HTTP response from {where}: {cause!r}")
    return Failed("connection_error", f"{type(error).__name__}: {error}")
