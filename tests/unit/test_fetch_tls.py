"""HTTPS with the connection pinned to the checked address: SNI and certificate checks still use the name."""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from taxonstream.core.errors import Failed
from taxonstream.fetching import safety
from taxonstream.fetching.download import Downloader
from taxonstream.fetching.settings import FetcherSettings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
JPEG = b"\xff\xd8\xff" + b"t" * 200


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A throw-away CA and a certificate for images.test signed by it."""
    where = tmp_path_factory.mktemp("tls")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=taxonstream test CA",
        cwd=where,
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=images.test",
        cwd=where,
    )
    (where / "san.cnf").write_text("subjectAltName=DNS:images.test\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        cwd=where,
    )
    return where


class Image(http.server.BaseHTTPRequestHandler):
    hosts: list[str] = []

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):  # noqa: N802
        Image.hosts.append(self.headers["Host"])
        self.send_response(200)
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        self.wfile.write(JPEG)


@pytest.fixture()
def tls_server(certs, monkeypatch):
    names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "server.pem", certs / "server.key")
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Image)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(certs / "ca.pem"))  # trust the test CA only
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):  # both test names live on 127.0.0.1
        if host in ("images.test", "other.test"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(safety.socket, "getaddrinfo", getaddrinfo)
    Image.hosts = []
    try:
        yield httpd.server_address[1], names
    finally:
        httpd.shutdown()
        httpd.server_close()


def downloader() -> Downloader:
    return Downloader(FetcherSettings(fetch_allow_networks="127.0.0.0/8", fetch_connect_timeout=2))


def test_https_to_a_pinned_address_sends_the_name_as_sni_and_verifies_it(tls_server):
    port, names = tls_server
    got = downloader().fetch(f"https://images.test:{port}/a.jpg")
    assert got.data == JPEG
    assert names == ["images.test"]  # SNI carried the name, not 127.0.0.1
    assert Image.hosts == [f"images.test:{port}"]


def test_a_certificate_for_another_name_is_refused_even_at_the_right_address(tls_server):
    port, _ = tls_server
    with pytest.raises(Failed) as caught:
        downloader().fetch(f"https://other.test:{port}/a.jpg")
    assert caught.value.reason == "tls_error"
    assert "other.test" in caught.value.message  # a hostname mismatch, not some other TLS trouble
    assert Image.hosts == []
