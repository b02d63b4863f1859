"""Hostile inputs against real servers on loopback: every row ends with a recorded reason, nothing crashes,
and nothing but complete, byte-identical images is ever left in the output folder.

One list of rows — one per kind of hostility — goes through `taxonstream fetch` (the standalone engine);
the report says how each ended. Servers listen on 127.0.0.2 (allowed), 127.0.0.3 (allowed, another host),
and ::1 where this machine has IPv6 loopback; everything else stays refused.
"""

from __future__ import annotations

import argparse
import csv
import email.utils
import gzip
import http.server
import io
import socket
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from taxonstream.cli import fetch_cmd

JPEG_SIZE = (64, 48)


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", JPEG_SIZE, (seed * 40 % 256, 90, 200)).save(out, format="JPEG", quality=90)
    return out.getvalue()


GOOD = jpeg(1)
GOOD2 = jpeg(2)
GOOD3 = jpeg(3)


def png_bomb() -> bytes:
    out = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(out, format="PNG")  # a few KB, 400 megapixels
    return out.getvalue()


BOMB = png_bomb()
GZIP_BOMB = gzip.compress(b"\0" * (20 << 20), compresslevel=9)  # ~20 KB that inflates to 20 MB


class Hostile(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits: Counter = Counter()
    lock = threading.Lock()
    other = ""  # base URL of the other allowed host, for cross-host redirects

    def log_message(self, format, *args):  # noqa: A002
        pass

    def answer(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802, C901 - one branch per kind of hostility
        path = self.path.split("?")[0]
        with Hostile.lock:
            Hostile.hits[path] += 1
            hit = Hostile.hits[path]
        port = self.server.server_address[1]
        jpeg_type = {"Content-Type": "image/jpeg"}
        if path == "/ok.jpg":
            self.answer(200, GOOD, jpeg_type)
        elif path == "/ok2.jpg":
            self.answer(200, GOOD2, jpeg_type)
        elif path in ("/404", "/410"):
            self.answer(int(path[1:]), b"<html>gone</html>", {"Content-Type": "text/html"})
        elif path == "/429-storm":
            self.answer(429, b"slow down")
        elif path == "/429-storm-retry-after":
            self.answer(429, b"slow down", {"Retry-After": "0"})
        elif path == "/429-then-ok":  # Retry-After as an HTTP-date (in the past: go now)
            if hit <= 2:
                self.answer(429, b"", {"Retry-After": email.utils.formatdate(time.time() - 5, usegmt=True)})
            else:
                self.answer(200, GOOD3, jpeg_type)
        elif path == "/503-burst-then-ok":
            if hit <= 2:
                self.answer(503, b"overloaded")
            else:
                self.answer(200, GOOD2, jpeg_type)
        elif path == "/503-forever":
            self.answer(503, b"overloaded")
        elif path == "/truncated.jpg":
            self.answer(200, GOOD[: len(GOOD) // 2], jpeg_type)
        elif path == "/short-body.jpg":  # declares more than it sends, then hangs up
            self.answer(200, GOOD[: len(GOOD) // 2], {**jpeg_type, "Content-Length": str(len(GOOD))})
            self.close_connection = True
        elif path == "/html-as-jpeg":
            self.answer(200, b"<!DOCTYPE html><html><body>Access denied</body></html>", jpeg_type)
        elif path == "/json-as-jpeg":
            self.answer(200, b'{"error": "not found"}', jpeg_type)
        elif path == "/empty.jpg":
            self.answer(200, b"", jpeg_type)
        elif path == "/gzip-bomb":
            self.answer(200, GZIP_BOMB, {**jpeg_type, "Content-Encoding": "gzip"})
        elif path == "/pixel-bomb.png":
            self.answer(200, BOMB, {"Content-Type": "image/png"})
        elif path == "/tiny.jpg":
            self.answer(200, jpeg_small(), jpeg_type)
        elif path == "/endless":  # chunked, never ends; bounded here so the test cannot run away
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\xff\xd8\xff" + b"\0" * 65533
            try:
                for _ in range(2000):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass
            self.close_connection = True
        elif path == "/trickle.jpg":  # each byte well inside the read timeout, the whole far beyond the total
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            try:
                for byte in GOOD[:60]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            self.close_connection = True
        elif path == "/stall.jpg":  # headers, then silence past the read timeout
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.flush()
            time.sleep(2.5)
            self.close_connection = True
        elif path == "/redirect-loop":
            self.answer(302, b"", {"Location": "/redirect-loop"})
        elif path == "/to-127.0.0.1":
            self.answer(302, b"", {"Location": f"http://127.0.0.1:{port}/ok.jpg"})
        elif path == "/to-ipv6-loopback":
            self.answer(302, b"", {"Location": f"http://[::1]:{port}/ok.jpg"})
        elif path == "/to-metadata":
            self.answer(302, b"", {"Location": "http://169.254.169.254/latest/meta-data/"})
        elif path == "/to-file-scheme":
            self.answer(302, b"", {"Location": "file:///etc/passwd"})
        elif path == "/to-other-host":
            self.answer(301, b"", {"Location": f"{Hostile.other}/ok2.jpg"})
        elif path == "/redirect-without-location":
            self.answer(302, b"")
        elif path == "/noai.jpg":
            self.answer(200, GOOD, {**jpeg_type, "X-Robots-Tag": "noai, noimageai"})
        elif path == "/otherbot-noai.jpg":  # addressed to another crawler: not an opt-out for us
            self.answer(200, GOOD3, {**jpeg_type, "X-Robots-Tag": "otherbot: noai"})
        elif path == "/brotli.jpg":
            self.answer(200, b"\x0b\x02\x80garbage", {**jpeg_type, "Content-Encoding": "br"})
        elif path == "/header-flood.jpg":
            self.send_response(200)
            for n in range(300):
                self.send_header(f"X-Flood-{n}", "x")
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD)
        elif path == "/not-http":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.0\r\n\r\n")
            self.close_connection = True
        elif path == "/ico.jpg":  # a real image, of a format that is not accepted
            out = io.BytesIO()
            Image.new("RGB", (16, 16)).save(out, format="ICO")
            self.answer(200, out.getvalue(), jpeg_type)
        else:
            self.answer(404, b"")


def jpeg_small() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, format="JPEG")
    return out.getvalue()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


class V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@contextmanager
def server(address: str):
    cls = V6Server if ":" in address else http.server.ThreadingHTTPServer
    httpd = cls((address, 0), Hostile)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    host = f"[{address}]" if ":" in address else address
    try:
        yield f"http://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        return probe.getsockname()[1]


def fetch(tmp_path: Path, rows: list[tuple[str, str]], *extra: str, list_text: str | None = None) -> dict:
    """Run `taxonstream fetch` on rows of (name, url); returns {name: report row} and the exit status."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    listing = tmp_path / "list.csv"
    if list_text is None:
        with open(listing, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "url"])
            writer.writerows(rows)
    else:
        listing.write_text(list_text)
    parser = argparse.ArgumentParser()
    fetch_cmd.add_parser(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(["fetch", str(listing), "--output", str(out), "--quiet", *extra])
    status = args.run(args)
    with open(out.parent / "out_logs" / "report.csv", newline="") as handle:
        report = list(csv.DictReader(handle))
    return {"status": status, "rows": report, "out": out}


@pytest.fixture()
def tuned(monkeypatch):
    """Small timeouts and budgets so every hostile case ends in well under a second or two."""
    for name, value in {
        "FETCH_CONNECT_TIMEOUT": "1",
        "FETCH_READ_TIMEOUT": "1.0",
        "FETCH_TOTAL_TIMEOUT": "2.0",
        "FETCH_MAX_BYTES": str(2 << 20),
        "FETCH_MAX_PIXELS": str(10_000_000),
        "FETCH_MIN_WIDTH": "16",
        "FETCH_MIN_HEIGHT": "16",
        "FETCH_ATTEMPTS": "2",
        "FETCH_THROTTLED_ATTEMPTS": "3",
        "FETCH_BACKOFF_BASE": "0.01",
        "FETCH_BACKOFF_MAX": "0.05",
        "FETCH_MAX_RETRY_AFTER": "0.2",
        "FETCH_INITIAL_RATE": "100",
        "FETCH_MIN_RATE": "20",
    }.items():
        monkeypatch.setenv(f"TAXONSTREAM_{name}", value)
    Hostile.hits = Counter()


def junk_in(out: Path, allowed: set[bytes]) -> list[Path]:
    """Every file in the output other than the logs must be one of the served images, byte for byte."""
    return [
        p
        for p in out.rglob("*")
        if p.is_file() and "_fetch" not in p.relative_to(out).parts and p.read_bytes() not in allowed
    ]


EXPECTED = {
    # name: (state, reason)
    "ok": ("stored", ""),
    "404": ("failed", "http_404"),
    "410": ("failed", "http_410"),
    "429_storm": ("failed", "http_429"),
    "429_storm_retry_after": ("failed", "http_429"),
    "429_then_ok": ("stored", ""),
    "503_burst_then_ok": ("stored", ""),
    "503_forever": ("failed", "http_503"),
    "truncated": ("failed", "truncated"),
    "short_body": ("failed", "incomplete_body"),
    "html_as_jpeg": ("failed", "not_an_image"),
    "json_as_jpeg": ("failed", "not_an_image"),
    "empty": ("failed", "empty_body"),
    "gzip_bomb": ("failed", "too_large"),
    "pixel_bomb": ("failed", "too_many_pixels"),
    "too_small": ("failed", "too_small"),
    "endless": ("failed", "too_large"),
    "trickle": ("failed", "timeout"),
    "stall": ("failed", "timeout"),
    "redirect_loop": ("failed", "too_many_redirects"),
    "redirect_without_location": ("failed", "bad_redirect"),
    "to_127_0_0_1": ("failed", "blocked_address"),
    "to_ipv6_loopback": ("failed", "blocked_address"),
    "to_metadata": ("failed", "blocked_address"),
    "to_file_scheme": ("failed", "bad_url"),
    "to_other_host": ("stored", ""),
    "noai": ("failed", "opted_out"),
    "otherbot_noai": ("stored", ""),
    "brotli": ("failed", "bad_encoding"),
    "header_flood": ("failed", "bad_response"),
    "not_http": ("failed", "bad_response"),
    "ico": ("failed", "unsupported_format"),
    "refused_port": ("failed", "connection_error"),
    "ftp": ("failed", "bad_url"),
    "file": ("failed", "bad_url"),
    "javascript": ("failed", "bad_url"),
    "data": ("failed", "bad_url"),
    "no_host": ("failed", "bad_url"),
    "broken_ipv6_literal": ("failed", "bad_url"),
    "bad_port": ("failed", "bad_url"),
    "not_a_url": ("failed", "bad_url"),
    "control_chars": ("failed", "bad_url"),
    "metadata_direct": ("failed", "blocked_address"),
    "loopback_direct": ("failed", "blocked_address"),
    "empty_url": ("skipped", "no_url"),  # a row without a URL is skipped and logged, as cautious-robot does
}


@pytest.fixture()
def hosts():
    with server("127.0.0.2") as main, server("127.0.0.3") as other:
        Hostile.other = other
        yield main, other


@pytest.mark.parametrize("processes", ["1", "2"])
def test_every_hostile_row_ends_with_its_reason_and_no_junk_is_kept(tmp_path, tuned, hosts, processes):
    base, _ = hosts
    paths = {
        "ok": "/ok.jpg",
        "404": "/404",
        "410": "/410",
        "429_storm": "/429-storm",
        "429_storm_retry_after": "/429-storm-retry-after",
        "429_then_ok": "/429-then-ok",
        "503_burst_then_ok": "/503-burst-then-ok",
        "503_forever": "/503-forever",
        "truncated": "/truncated.jpg",
        "short_body": "/short-body.jpg",
        "html_as_jpeg": "/html-as-jpeg",
        "json_as_jpeg": "/json-as-jpeg",
        "empty": "/empty.jpg",
        "gzip_bomb": "/gzip-bomb",
        "pixel_bomb": "/pixel-bomb.png",
        "too_small": "/tiny.jpg",
        "endless": "/endless",
        "trickle": "/trickle.jpg",
        "stall": "/stall.jpg",
        "redirect_loop": "/redirect-loop",
        "redirect_without_location": "/redirect-without-location",
        "to_127_0_0_1": "/to-127.0.0.1",
        "to_ipv6_loopback": "/to-ipv6-loopback",
        "to_metadata": "/to-metadata",
        "to_file_scheme": "/to-file-scheme",
        "to_other_host": "/to-other-host",
        "noai": "/noai.jpg",
        "otherbot_noai": "/otherbot-noai.jpg",
        "brotli": "/brotli.jpg",
        "header_flood": "/header-flood.jpg",
        "not_http": "/not-http",
        "ico": "/ico.jpg",
    }
    rows = [(name, base + path) for name, path in paths.items()]
    rows += [
        ("refused_port", f"http://127.0.0.2:{closed_port()}/a.jpg"),
        ("ftp", "ftp://127.0.0.2/a.jpg"),
        ("file", "file:///etc/passwd"),
        ("javascript", "javascript:alert(1)"),
        ("data", "data:image/jpeg;base64,/9j/4AAQ"),
        ("no_host", "http:///a.jpg"),
        ("broken_ipv6_literal", "http://[::1/a.jpg"),
        ("bad_port", "http://127.0.0.2:99999/a.jpg"),
        ("not_a_url", "just some words"),
        ("control_chars", "http://127.0.0.2/a\r\nX-Injected: 1"),
        ("metadata_direct", "http://169.254.169.254/latest/meta-data/"),
        ("loopback_direct", "http://127.0.0.1:9/a.jpg"),
        ("empty_url", ""),
    ]
    assert len(EXPECTED) >= 20 and {name for name, _ in rows} == set(EXPECTED)

    result = fetch(
        tmp_path,
        rows,
        "--name-col",
        "name",
        "--allow-network",
        "127.0.0.2/32",
        "--allow-network",
        "127.0.0.3/32",
        "--processes",
        processes,
    )

    got = {
        row["url"] and next(n for n, u in rows if u.strip() == row["url"]) or "empty_url": row for row in result["rows"]
    }
    assert {name: (row["state"], row["reason"]) for name, row in got.items()} == EXPECTED
    assert all(row["message"] for row in result["rows"] if row["state"] == "failed")
    assert result["status"] == 1  # some rows failed
    out = result["out"]
    assert junk_in(out, {GOOD, GOOD2, GOOD3}) == []
    kept = sorted(p.name for p in out.iterdir() if p.is_file())
    assert kept == ["429_then_ok.jpg", "503_burst_then_ok.jpg", "ok.jpg", "otherbot_noai.jpg", "to_other_host.jpg"]
    assert not (out.parent / "out_logs" / "tmp").exists()  # no partial files left behind
    # The retried rows say how many requests they took; the storms stopped at their budget.
    assert got["429_then_ok"]["attempts"] == "3" and got["503_burst_then_ok"]["attempts"] == "3"
    assert Hostile.hits["/429-storm"] == 3 and Hostile.hits["/503-forever"] == 3
    assert Hostile.hits["/ok.jpg"] == 1  # the refused redirects to 127.0.0.1 and ::1 never arrived here


def test_malformed_list_rows_are_recorded_and_the_rest_fetched(tmp_path, tuned, hosts):
    base, _ = hosts
    text = f'name,url\ngood,{base}/ok.jpg\ntoo_many,{base}/ok2.jpg,surplus,fields\nunterminated,"{base}/ok2.jpg\n'
    result = fetch(tmp_path, [], "--name-col", "name", "--allow-network", "127.0.0.2/32", list_text=text)
    states = sorted((row["state"], row["reason"]) for row in result["rows"])
    assert states == [("failed", "bad_row"), ("failed", "bad_row"), ("stored", "")]
    assert [row["url"] for row in result["rows"] if row["state"] == "stored"] == [f"{base}/ok.jpg"]
    assert Hostile.hits["/ok2.jpg"] == 0  # the URLs in broken rows were not guessed at
    assert junk_in(result["out"], {GOOD}) == []


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback_is_refused_unless_allowed(tmp_path, tuned):
    with server("::1") as base:
        refused = fetch(
            tmp_path / "a", [("v6", f"{base}/ok.jpg")], "--name-col", "name", "--allow-network", "127.0.0.0/8"
        )
        allowed = fetch(tmp_path / "b", [("v6", f"{base}/ok.jpg")], "--name-col", "name", "--allow-network", "::1/128")
    assert [(r["state"], r["reason"]) for r in refused["rows"]] == [("failed", "blocked_address")]
    assert [(r["state"], r["reason"]) for r in allowed["rows"]] == [("stored", "")]
    assert Hostile.hits["/ok.jpg"] == 1  # only the allowed run reached the server


def test_ipv4_mapped_ipv6_cannot_sneak_past_the_check():
    from taxonstream.core.errors import Failed
    from taxonstream.fetching.safety import check_host

    with pytest.raises(Failed) as caught:
        check_host("::ffff:127.0.0.1", 80, [])
    assert caught.value.reason == "blocked_address"


def test_robots_txt_is_obeyed_when_asked(tmp_path, tuned, monkeypatch):
    class WithRobots(Hostile):
        def do_GET(self):  # noqa: N802
            if self.path == "/robots.txt":
                self.answer(200, b"User-agent: *\nDisallow: /private/\n", {"Content-Type": "text/plain"})
            elif self.path.startswith("/private/"):
                self.answer(200, GOOD, {"Content-Type": "image/jpeg"})
            else:
                super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.2", 0), WithRobots)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        base = f"http://127.0.0.2:{httpd.server_address[1]}"
        rows = [("public", f"{base}/ok.jpg"), ("private", f"{base}/private/a.jpg")]
        result = fetch(tmp_path, rows, "--name-col", "name", "--allow-network", "127.0.0.2/32", "--robots")
    finally:
        httpd.shutdown()
        httpd.server_close()
    states = {row["url"].rsplit("/", 1)[-1]: (row["state"], row["reason"]) for row in result["rows"]}
    assert states == {"ok.jpg": ("stored", ""), "a.jpg": ("failed", "robots_disallowed")}
    assert Hostile.hits["/private/a.jpg"] == 0
