"""One safe download: every hop's address checked, redirects bounded, bytes capped while streaming."""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin

import httpx

from taxonstream.core.errors import Failed
from taxonstream.fetcher.safety import check_host, check_url
from taxonstream.fetcher.settings import FetcherSettings

REDIRECTS = {301, 302, 303, 307, 308}
# Worth another attempt: the server may answer later.
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class RetryLater(Exception):
    """A failure another attempt may cure; `delay` is what the server asked for, if anything."""

    def __init__(self, failure: Failed, delay: float | None = None) -> None:
        super().__init__(str(failure))
        self.failure = failure
        self.delay = delay


@dataclass(frozen=True)
class Downloaded:
    data: bytes
    final_url: str


class Downloader:
    def __init__(self, settings: FetcherSettings) -> None:
        self.settings = settings
        self.allowed = settings.allowed_networks()
        self.client = httpx.Client(
            follow_redirects=False,
            headers={"User-Agent": settings.fetch_user_agent, "Accept": "image/*,*/*;q=0.5"},
            timeout=httpx.Timeout(
                connect=settings.fetch_connect_timeout,
                read=settings.fetch_read_timeout,
                write=settings.fetch_read_timeout,
                pool=settings.fetch_total_timeout,
            ),
            limits=httpx.Limits(max_connections=4 * settings.fetch_concurrency),
        )

    def fetch(self, url: str) -> Downloaded:
        deadline = time.monotonic() + self.settings.fetch_total_timeout
        current = url
        for _hop in range(self.settings.fetch_max_redirects + 1):
            host, port = check_url(current)
            check_host(host, port, self.allowed)
            try:
                with self.client.stream("GET", current) as response:
                    if response.status_code in REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise Failed("bad_redirect", f"HTTP {response.status_code} without a Location header")
                        current = urljoin(current, location)
                        continue
                    if response.status_code != 200:
                        failure = Failed(f"http_{response.status_code}", f"HTTP {response.status_code} from {current}")
                        if response.status_code in RETRYABLE_STATUS:
                            raise RetryLater(failure, retry_after(response.headers.get("retry-after")))
                        raise failure
                    return Downloaded(self._read_capped(response, deadline), current)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
                raise Failed("bad_url", f"{current!r}: {error}") from error
            except httpx.DecodingError as error:
                raise Failed("bad_encoding", f"the body's Content-Encoding does not decode: {error}") from error
            except httpx.TimeoutException as error:
                raise RetryLater(Failed("timeout", f"{type(error).__name__} fetching {current}")) from error
            except httpx.TransportError as error:
                raise RetryLater(Failed("connection_error", f"{type(error).__name__}: {error}")) from error
        raise Failed("too_many_redirects", f"more than {self.settings.fetch_max_redirects} redirects from {url}")

    def _read_capped(self, response: httpx.Response, deadline: float) -> bytes:
        cap = self.settings.fetch_max_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise Failed("too_large", f"Content-Length {declared} exceeds the {cap}-byte cap")
        chunks, size = [], 0
        # iter_bytes decodes Content-Encoding, so the cap also stops gzip bombs.
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > cap:
                raise Failed("too_large", f"body exceeds the {cap}-byte cap")
            if time.monotonic() > deadline:
                raise Failed("timeout", f"download took longer than {self.settings.fetch_total_timeout:g} s")
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.client.close()


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header, in either of its forms (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None
