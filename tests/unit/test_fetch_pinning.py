"""Connections go only to the address that was checked: DNS rebinding between check and connect cannot win."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from taxonstream.core.errors import Failed
from taxonstream.fetching import safety
from taxonstream.fetching.download import Downloader
from taxonstream.fetching.settings import FetcherSettings
from tools.demo.sample import serve

JPEG = b"\xff\xd8\xff" + b"x" * 100


class Counting(http.server.BaseHTTPRequestHandler):
    hits = 0
    lock = threading.Lock()

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):  # noqa: N802
        with Counting.lock:
            Counting.hits += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        self.wfile.write(JPEG)


@pytest.fixture()
def port():
    Counting.hits = 0
    with serve(None, Counting) as url:
        yield int(url.rsplit(":", 1)[1])


def fake_dns(monkeypatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Resolve names from `answers` (one list of addresses per successive lookup); log each lookup."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        seq = answers[host]
        addresses = seq.pop(0) if len(seq) > 1 else seq[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(safety.socket, "getaddrinfo", getaddrinfo)
    return lookups


def test_the_socket_goes_to_the_checked_address_even_if_dns_changes_its_answer(monkeypatch, port):
    # First lookup (the check): the allowed 127.0.0.1. Any later lookup would say 10.255.0.1, never allowed.
    lookups = fake_dns(monkeypatch, {"rebind.test": [["127.0.0.1"], ["10.255.0.1"]]})
    downloader = Downloader(FetcherSettings(fetch_allow_networks="127.0.0.0/8", fetch_connect_timeout=1))
    got = downloader.fetch(f"http://rebind.test:{port}/a.jpg")
    assert got.data == JPEG
    assert lookups == ["rebind.test"]  # one resolution per connection: the checked one is used
    assert Counting.hits == 1


def test_a_refused_address_is_never_connected_to(monkeypatch, port):
    fake_dns(monkeypatch, {"inside.test": [["127.0.0.1"]]})
    with pytest.raises(Failed) as caught:
        Downloader(FetcherSettings()).fetch(f"http://inside.test:{port}/a.jpg")
    assert caught.value.reason == "blocked_address"
    assert Counting.hits == 0


def test_one_private_address_among_public_ones_refuses_the_host(monkeypatch, port):
    fake_dns(monkeypatch, {"mixed.test": [["93.184.216.34", "127.0.0.1"]]})
    with pytest.raises(Failed) as caught:
        Downloader(FetcherSettings()).fetch(f"http://mixed.test:{port}/a.jpg")
    assert caught.value.reason == "blocked_address" and "127.0.0.1" in caught.value.message
    assert Counting.hits == 0


def test_the_host_header_keeps_the_name(monkeypatch):
    seen: list[str] = []

    class Echo(Counting):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers["Host"])
            super().do_GET()

    fake_dns(monkeypatch, {"named.test": [["127.0.0.1"]]})
    with serve(None, Echo) as url:
        port = url.rsplit(":", 1)[1]
        Downloader(FetcherSettings(fetch_allow_networks="127.0.0.0/8")).fetch(f"http://named.test:{port}/a.jpg")
    assert seen == [f"named.test:{port}"]


def test_connect_checked_refuses_before_making_a_socket(monkeypatch):
    made: list[object] = []
    monkeypatch.setattr(safety.socket, "socket", lambda *a, **k: made.append(a) or pytest.fail("socket made"))
    with pytest.raises(Failed):
        safety.connect_checked("169.254.169.254", 80, 1.0, [])
    assert made == []
