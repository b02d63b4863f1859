"""The engine against loopback servers: connection caps per host and overall, Retry-After, metrics, outcomes."""

from __future__ import annotations

import http.server
import io
import threading
import time
from contextlib import contextmanager

import pytest
from PIL import Image

from taxonstream.fetching import metrics
from taxonstream.fetching.engine import FetchEngine, Task
from taxonstream.fetching.settings import FetcherSettings


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(out, format="JPEG")
    return out.getvalue()


JPEG = jpeg()


class Counting(http.server.BaseHTTPRequestHandler):
    """Answers after a short pause, counting how many requests it holds at once (per server and overall)."""

    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    now: dict[int, int] = {}
    peak: dict[int, int] = {}
    total_now = 0
    total_peak = 0
    times: list[tuple[str, float]] = []

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):  # noqa: N802
        port = self.server.server_address[1]
        cls = Counting
        with cls.lock:
            cls.times.append((self.path, time.monotonic()))
            cls.now[port] = cls.now.get(port, 0) + 1
            cls.peak[port] = max(cls.peak.get(port, 0), cls.now[port])
            cls.total_now += 1
            cls.total_peak = max(cls.total_peak, cls.total_now)
        try:
            if self.path.startswith("/busy-once") and sum(p == self.path for p, _ in cls.times) == 1:
                self.send_response(429)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            time.sleep(0.03)  # long enough for requests to overlap if the caps allowed it
            self.send_response(200)
            self.send_header("Content-Length", str(len(JPEG)))
            self.end_headers()
            self.wfile.write(JPEG)
        finally:
            with cls.lock:
                cls.now[port] -= 1
                cls.total_now -= 1


@contextmanager
def servers(count: int):
    Counting.now, Counting.peak, Counting.total_now, Counting.total_peak, Counting.times = {}, {}, 0, 0, []
    running = [http.server.ThreadingHTTPServer((f"127.0.0.{10 + n}", 0), Counting) for n in range(count)]
    for httpd in running:
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield [f"http://127.0.0.{10 + n}:{h.server_address[1]}" for n, h in enumerate(running)]
    finally:
        for httpd in running:
            httpd.shutdown()
            httpd.server_close()


def settings(**overrides) -> FetcherSettings:
    return FetcherSettings(fetch_allow_networks="127.0.0.0/8", fetch_initial_rate=500, **overrides)


def test_connection_caps_hold_per_host_and_overall():
    with servers(3) as bases:
        tasks = [Task(f"{n}", f"{base}/img/{n}") for n in range(40) for base in bases]
        results = []
        engine = FetchEngine(
            settings(fetch_max_connections=5, fetch_max_connections_per_host=2), on_result=results.append
        )
        summary = engine.run(tasks)
    assert summary.stored == len(tasks) == len(results)
    assert max(Counting.peak.values()) <= 2
    assert Counting.total_peak <= 5
    assert max(Counting.peak.values()) == 2  # and the caps were reached: the test could have failed


def test_retry_after_is_waited_for_before_the_host_is_asked_again():
    with servers(1) as (base,):
        results = []
        FetchEngine(settings(), on_result=results.append).run([Task("a", f"{base}/busy-once")])
    (result,) = results
    assert result.ok and result.attempts == 2
    (first, second) = [t for path, t in Counting.times if path == "/busy-once"]
    assert second - first >= 0.95  # a lower bound only: never sooner than the host asked


def test_metrics_count_requests_bytes_and_outcomes_per_host():
    with servers(1) as (base,):
        host = base.split("//")[1].split(":")[0]
        label = metrics.host_label(host)
        before = metrics.REQUESTS.labels(label, "200")._value.get()
        stored = metrics.RECORDS.labels("stored", "")._value.get()
        bad = metrics.RECORDS.labels("failed", "bad_url")._value.get()
        FetchEngine(settings()).run([Task("a", f"{base}/1"), Task("b", f"{base}/2"), Task("c", "gopher://x/")])
    assert metrics.REQUESTS.labels(label, "200")._value.get() - before == 2
    assert metrics.BYTES.labels(label)._value.get() >= 2 * len(JPEG)
    assert metrics.RATE.labels(label)._value.get() > 0
    assert metrics.RECORDS.labels("stored", "")._value.get() - stored == 2
    assert metrics.RECORDS.labels("failed", "bad_url")._value.get() - bad == 1


def test_a_store_that_fails_ends_the_record_failed_and_the_run_goes_on():
    def store(result):
        if result.task.key == "disk-full":
            raise OSError(28, "No space left on device")
        return "ok"

    with servers(1) as (base,):
        results = {}
        FetchEngine(settings(), store=store, on_result=lambda r: results.update({r.task.key: r})).run(
            [Task("disk-full", f"{base}/1"), Task("fine", f"{base}/2")]
        )
    assert (results["disk-full"].ok, results["disk-full"].reason) == (False, "store_error")
    assert (results["fine"].ok, results["fine"].stored) == (True, "ok")


def test_a_broken_input_is_raised_after_the_records_read_so_far_have_ended():
    def tasks():
        yield Task("a", "http://127.0.0.1:9/never")  # refused without the allow-list below
        raise ValueError("row 2 is unreadable")

    results = []
    with pytest.raises(ValueError, match="row 2"):
        FetchEngine(FetcherSettings(), on_result=results.append).run(tasks())
    assert [(r.task.key, r.reason) for r in results] == [("a", "blocked_address")]


@pytest.mark.parametrize("processes", [1, 2])
def test_a_stopped_run_returns_with_every_started_record_reported(processes):
    from taxonstream.fetching.shards import ShardedEngine

    with servers(2) as bases:
        tasks = [Task(f"{base}-{n}", f"{base}/img/{n}") for n in range(300) for base in bases]
        results = []
        if processes == 1:
            engine = FetchEngine(settings(fetch_max_connections=4), on_result=results.append)
        else:
            engine = ShardedEngine(settings(fetch_max_connections=4), processes, on_result=results.append)

        def on_result(result):
            results.append(result)
            engine.stop()  # as Ctrl-C does

        engine.on_result = on_result
        summary = engine.run(tasks)
        reported = len(results)
    assert 0 < reported < len(tasks)
    assert summary.stored + summary.failed == reported  # nothing finished unreported, nothing after the return
    assert len({r.task.key for r in results}) == reported


def test_hosts_are_spread_over_processes_and_each_stays_with_one():
    from taxonstream.fetching.shards import Owners

    owners = Owners(2)
    urls = [f"http://127.0.0.{61 + n % 4}/{n}" for n in range(400)]  # four hosts, interleaved
    shards = [owners.shard(url) for url in urls]
    by_host: dict[str, set[int]] = {}
    for url, shard in zip(urls, shards, strict=True):
        by_host.setdefault(url.split("/")[2], set()).add(shard)
    assert all(len(s) == 1 for s in by_host.values())  # a host never changes process
    assert owners.load == [200, 200]  # two hosts each (a name hash put three of these four together)
