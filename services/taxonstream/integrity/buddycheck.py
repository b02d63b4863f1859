"""Buddy-check: compare what was received with the checksums the provider said to expect.

cautious-robot downloads, then runs sum-buddy and reports expected checksums it did not find. Here the same
check runs per record in the stream (an input row that carries `md5`, `sha256`, … or Audubon Core's
`ac:hashFunction` + `ac:hashValue` is verified as soon as its bytes arrive, and a mismatch is a failed record
naming both values) and per manifest (`check_manifest`, for a folder or a finished job).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from taxonstream.integrity.checksums import SHAKE, Algorithm, digest_bytes

# Algorithms an input column can name; shake_* need a length, taken from the expected value's length.
KNOWN = frozenset(hashlib.algorithms_guaranteed)
_HEX = re.compile(r"[0-9a-f]+")


class ExpectedChecksumError(ValueError):
    """An expected checksum that cannot be right (wrong length, not hex, unknown algorithm)."""


def _algorithm_name(text: str) -> str | None:
    """'SHA-256', 'sha256', 'MD5' → hashlib's name, or None if it names no algorithm we know."""
    name = text.strip().lower().replace("-", "").replace(" ", "")
    name = {"sha3256": "sha3_256", "sha3512": "sha3_512", "sha3224": "sha3_224", "sha3384": "sha3_384"}.get(name, name)
    name = {"shake128": "shake_128", "shake256": "shake_256"}.get(name, name)
    return name if name in KNOWN else None


def _column_algorithm(column: str) -> str | None:
    """The algorithm an input column holds: `md5`, `sha256_checksum`, `checksum_sha1`, `md5sum`, `expected_md5`."""
    name = column.strip().lower()
    for pattern in (r"(.+)_checksum", r"checksum_(.+)", r"(.+)sum", r"expected_(.+)", r"(.+)_hash", r"(.+)"):
        match = re.fullmatch(pattern, name)
        if match and (algorithm := _algorithm_name(match.group(1))):
            return algorithm
    return None


def expected_checksums(metadata: Mapping[str, str]) -> dict[str, str]:
    """Expected digests carried by an input row, by algorithm; raises ExpectedChecksumError if one is malformed.

    Empty values are ignored (a column present for some rows only).
    """
    found: dict[str, str] = {}
    lowered = {k.lower(): v for k, v in metadata.items()}
    function, value = lowered.get("ac:hashfunction", ""), lowered.get("ac:hashvalue", "")
    if value.strip():
        algorithm = _algorithm_name(function or "")
        if algorithm is None:
            raise ExpectedChecksumError(f"ac:hashValue given with unknown ac:hashFunction {function!r}")
        found[algorithm] = value
    for column, text in metadata.items():
        if column.lower().startswith("ac:") or not str(text).strip():
            continue
        algorithm = _column_algorithm(column)
        if algorithm is not None:
            found[algorithm] = text
    return {a: _normalise(a, v) for a, v in found.items()}


def _normalise(algorithm: str, value: str) -> str:
    hex_value = str(value).strip().lower()
    if not _HEX.fullmatch(hex_value):
        raise ExpectedChecksumError(f"expected {algorithm} {value!r} is not hexadecimal")
    if algorithm not in SHAKE:
        size = hashlib.new(algorithm).digest_size
        if len(hex_value) != 2 * size:
            raise ExpectedChecksumError(
                f"expected {algorithm} {value!r} has {len(hex_value)} hex digits, {algorithm} has {2 * size}"
            )
    elif len(hex_value) % 2:
        raise ExpectedChecksumError(f"expected {algorithm} {value!r} has an odd number of hex digits")
    return hex_value


@dataclass(frozen=True)
class Mismatch:
    algorithm: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.algorithm} expected {self.expected}, got {self.actual}"


def verify(data: bytes, expected: Mapping[str, str], known: Mapping[str, str] | None = None) -> list[Mismatch]:
    """Mismatches between `expected` digests and the bytes' (digests already in `known` are not recomputed)."""
    known = dict(known or {})
    missing = [Algorithm(a, len(v) // 2) if a in SHAKE else Algorithm(a) for a, v in expected.items() if a not in known]
    known.update(digest_bytes(data, missing))
    return [Mismatch(a, v, known[a]) for a, v in sorted(expected.items()) if known[a] != v]


def describe(mismatches: Sequence[Mismatch]) -> str:
    """One readable line for a failed record's message."""
    return "; ".join(str(m) for m in mismatches)


@dataclass
class ManifestCheck:
    """A manifest against the expected checksums: which matched, which differ, which are missing or extra."""

    algorithm: str
    matched: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, str, str]] = field(default_factory=list)  # (name, expected, actual)
    missing: list[tuple[str, str]] = field(default_factory=list)  # expected (name, checksum) with no such file
    unexpected: list[str] = field(default_factory=list)  # files with no expectation

    @property
    def ok(self) -> bool:
        return not self.mismatched and not self.missing


def check_manifest(
    expected: Sequence[Mapping[str, str]],
    actual: Sequence[Mapping[str, str]],
    algorithm: str = "md5",
    match_on: str = "filename",
) -> ManifestCheck:
    """Rows of an expectations table against rows of a manifest (sum-buddy's or ours), matched by `match_on`.

    Both need the `match_on` column and a column for `algorithm`; names and hex digits compare case-insensitively
    for the checksum, exactly for the name.
    """
    for label, rows in (("expected", expected), ("actual", actual)):
        if rows and (match_on not in rows[0] or algorithm not in rows[0]):
            raise ValueError(f"{label} rows need columns {match_on!r} and {algorithm!r}; have {sorted(rows[0])}")
    have: dict[str, str] = {}
    for row in actual:
        have.setdefault(row[match_on], row[algorithm].strip().lower())
    result = ManifestCheck(algorithm)
    seen = set()
    for row in expected:
        name, want = row[match_on], row[algorithm].strip().lower()
        seen.add(name)
        if name not in have:
            result.missing.append((name, want))
        elif have[name] == want:
            result.matched.append(name)
        else:
            result.mismatched.append((name, want, have[name]))
    result.unexpected = [name for name in have if name not in seen]
    return result
