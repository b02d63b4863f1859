"""robots.txt per RFC 9309: fetched once per host (through the same safe downloader), then obeyed.

Status rules from the RFC: 2xx is parsed; redirects are followed (the downloader allows five);
4xx means there are no rules ("unavailable": everything allowed); 5xx and network errors mean the host
cannot say, which must be read as "everything disallowed" (here: for this run; retried first, as often as
the attempt policy in `attempts.py` allows, which also turns a disallowed URL into its final failure).
Only the first 500 KiB are parsed, as the RFC allows. Crawl-delay, where given, caps the host's rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

from taxonstream.core.errors import Failed
from taxonstream.fetching.attempts import NOT_SENT, RetryLater

if TYPE_CHECKING:
    from taxonstream.fetching.download import Downloader

MAX_BYTES = 500 * 1024


@dataclass
class Robots:
    parser: RobotFileParser | None
    allow_all: bool = False
    disallow_all: bool = False
    why: str = ""

    def allowed(self, url: str, agent: str) -> bool:
        if self.allow_all:
            return True
        if self.disallow_all or self.parser is None:
            return False
        return self.parser.can_fetch(agent, url)

    def crawl_delay(self, agent: str) -> float | None:
        if self.parser is None:
            return None
        delay = self.parser.crawl_delay(agent)
        try:
            return float(delay) if delay is not None else None
        except (TypeError, ValueError):
            return None


def parse(text: str) -> Robots:
    parser = RobotFileParser()
    parser.parse(text.splitlines())
    return Robots(parser)


def robots_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/robots.txt"


def fetch_robots(downloader: Downloader, url: str) -> Robots:
    """The rules for `url`'s host. Raises RetryLater when the host should be asked again later."""
    try:
        got = downloader.fetch(robots_url(url), expect_image=False, max_bytes=4 * MAX_BYTES)
    except RetryLater:
        raise
    except Failed as error:
        if error.reason.startswith("http_4"):
            return Robots(None, allow_all=True, why=f"robots.txt answered {error.reason}: no rules")
        if error.reason in NOT_SENT:
            # Nothing can be sent to this host at all; each record's own fetch fails with this reason.
            return Robots(None, allow_all=True, why=error.message)
        return unreachable(f"robots.txt could not be read ({error.reason}: {error.message})")
    return parse(got.data[:MAX_BYTES].decode("utf-8", errors="replace"))


def unreachable(why: str) -> Robots:
    return Robots(None, disallow_all=True, why=why)
