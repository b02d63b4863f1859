"""Topic names (one configurable prefix) and their settings."""

from __future__ import annotations

from dataclasses import dataclass

DLQ_SUFFIX = ".dlq"
# Keyed by record id / job id, where only the newest value of a key matters.
_COMPACTED = {"outcomes", "jobs"}


@dataclass(frozen=True)
class Topics:
    prefix: str = "taxonstream."

    def name(self, short: str) -> str:
        return self.prefix + short

    @property
    def records(self) -> str:
        return self.name("records")

    @property
    def fetched(self) -> str:
        return self.name("fetched")

    @property
    def verified(self) -> str:
        return self.name("verified")

    @property
    def cropped(self) -> str:
        return self.name("cropped")

    @property
    def embedded(self) -> str:
        return self.name("embedded")

    @property
    def reembed(self) -> str:
        return self.name("reembed")

    @property
    def outcomes(self) -> str:
        return self.name("outcomes")

    @property
    def jobs(self) -> str:
        return self.name("jobs")

    @staticmethod
    def dlq(topic: str) -> str:
        return topic + DLQ_SUFFIX

    def all(self) -> dict[str, dict[str, str]]:
        """Every topic the system uses, with its topic-level configuration."""
        work = ["records", "fetched", "verified", "cropped", "embedded", "reembed"]
        topics: dict[str, dict[str, str]] = {}
        for short in [*work, *_COMPACTED]:
            config = {"cleanup.policy": "compact"} if short in _COMPACTED else {}
            topics[self.name(short)] = config
        for short in work:
            topics[self.dlq(self.name(short))] = {}
        return topics
