"""The downloader against a real HTTP server on loopback: redirects re-checked, caps, Retry-After."""

from __future__ import annotations

import email.utils
import http.server
import time

import pytest

from taxonstream.core.errors import Failed
from taxonstream.fetching.attempts import RetryLater, retry_after
from taxonstream.fetching.download import Downloader
from taxonstream.fetching.settings import FetcherSettings
from tools.demo.sample import serve

BODY = b"\xff\xd8" + b"x" * 5000


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):  # noqa: N802
        routes = {
            "/ok": (200, {}, BODY),
            "/to-ok": (302, {"Location": "/ok"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
            "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
            "/busy": (429, {"Retry-After": "7"}, b""),
            "/gone": (410, {}, b""),
        }
        status, headers, body = routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def base_url():
    with serve(None, Handler) as url:
        yield url


def downloader(**overrides) -> Downloader:
    return Downloader(FetcherSettings(fetch_allow_networks="127.0.0.0/8", **overrides))


def test_a_redirect_is_followed_to_the_body(base_url):
    got = downloader().fetch(f"{base_url}/to-ok")
    assert (got.data, got.final_url) == (BODY, f"{base_url}/ok")


def test_loopback_is_refused_without_the_allow_list(base_url):
    with pytest.raises(Failed) as caught:
        Downloader(FetcherSettings()).fetch(f"{base_url}/ok")
    assert caught.value.reason == "blocked_address"


def test_a_redirect_to_the_metadata_address_is_refused(base_url):
    with pytest.raises(Failed) as caught:
        downloader().fetch(f"{base_url}/to-metadata")
    assert caught.value.reason == "blocked_address"


def test_redirect_loops_end(base_url):
    with pytest.raises(Failed) as caught:
        downloader(fetch_max_redirects=3).fetch(f"{base_url}/loop")
    assert caught.value.reason == "too_many_redirects"


def test_the_byte_cap_stops_the_download(base_url):
    with pytest.raises(Failed) as caught:
        downloader(fetch_max_bytes=1000).fetch(f"{base_url}/ok")
    assert caught.value.reason == "too_large"


def test_429_is_retryable_with_the_servers_delay_and_410_is_final(base_url):
    with pytest.raises(RetryLater) as caught:
        downloader().fetch(f"{base_url}/busy")
    assert (caught.value.failure.reason, caught.value.delay) == ("http_429", 7.0)
    with pytest.raises(Failed) as final:
        downloader().fetch(f"{base_url}/gone")
    assert final.value.reason == "http_410"


def test_retry_after_reads_both_forms():
    assert retry_after("120") == 120.0
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= retry_after(in_a_minute) <= 61
    assert retry_after("soon") is None and retry_after(None) is None
