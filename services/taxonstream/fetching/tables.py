"""Delimited text as (line number, header, fields): encodings refused clearly, delimiters found by content,
and a broken quote that costs one line, never the rows after it.

- Encoding: UTF-8 (with or without a BOM) and UTF-16 with a BOM are recognised; anything else must be
  asked for (`encoding="latin-1"`). Undecodable bytes are an InputError naming the line and byte offset,
  never silently replaced.
- Delimiter: tab for .tsv; otherwise csv.Sniffer over the first 64 KiB, limited to , TAB ; | (so ':' and
  '/' in URLs are never taken), checked against the header; an explicit delimiter overrides it.
- Lines: every record is numbered by the line it starts on (line 1 is the header). When a quoted field
  runs past its line and the record then fails (an unterminated quote, text after a closing quote, too
  many fields), the first line is reported bad and reading resumes at the line after it, so the next
  valid row is read instead of being swallowed into the broken one.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SNIFF_BYTES = 64 << 10
DELIMITERS = ",\t;|"
BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class TableError(ValueError):
    """The file cannot be read as text at all (the caller turns it into its own InputError)."""


@dataclass(frozen=True)
class Dialect:
    delimiter: str = ","
    quotechar: str | None = '"'  # None: quotes are ordinary characters (a DwC-A with fieldsEnclosedBy="")
    header_lines: int = 1


def parse_delimiter(value: str) -> str:
    """A delimiter as typed on a command line or in meta.xml: `\\t`, `tab`, `,` …"""
    named = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "\\|": "|"}
    value = named.get(value.lower(), value)
    if len(value) != 1:
        raise TableError(f"delimiter {value!r}: expected one character (or \\t)")
    return value


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, gunzipped when it is named .gz (checked: plain text named .gz is refused clearly)."""
    if path.suffix.lower() != ".gz":
        return open(path, "rb")
    handle = gzip.open(path)  # noqa: SIM115 - returned open, closed by the caller
    try:
        handle.peek(1)
    except (OSError, EOFError, zlib.error) as error:
        handle.close()
        raise TableError(f"{path}: named .gz but not gzip-compressed ({error}); rename it or compress it") from None
    return handle


def detect_encoding(head: bytes, asked: str | None) -> str:
    if asked:
        try:
            return codecs.lookup(asked).name
        except LookupError:
            raise TableError(f"unknown encoding {asked!r}") from None
    for bom, name in BOMS:
        if head.startswith(bom):
            return name
    return "utf-8"


def _undecodable(path: Path, line: int, offset: int, data: bytes, encoding: str) -> TableError:
    hint = " (if the file is Latin-1, say --encoding latin-1)" if encoding.startswith("utf") else ""
    return TableError(f"{path}: line {line}, byte {offset}: 0x{data.hex()} is not valid {encoding}{hint}")


def text_lines(path: Path, encoding: str | None = None, source: IO[bytes] | None = None) -> Iterator[str]:
    """The file's lines decoded strictly, each with its line end (as the csv module wants them)."""
    handle = source or open_binary(path)
    try:
        head = handle.peek(4)[:4] if hasattr(handle, "peek") else b""
        name = detect_encoding(head, encoding)
        if name.startswith("utf-16"):  # not line-splittable as bytes: a strict text wrapper, counted by line
            decoder = codecs.getincrementaldecoder(name)(errors="strict")
            number, pending = 0, ""
            for chunk in iter(lambda: handle.read(1 << 16), b""):
                try:
                    pending += decoder.decode(chunk)
                except UnicodeDecodeError as error:
                    raise _undecodable(
                        path, number + pending.count("\n") + 1, error.start, error.object[error.start : error.end], name
                    ) from None
                *complete, pending = pending.split("\n")
                for line in complete:
                    number += 1
                    yield line + "\n"
            pending += decoder.decode(b"", final=True)
            if pending:
                yield pending
            return
        offset = 0
        for number, raw in enumerate(handle, start=1):
            if number == 1 and name == "utf-8-sig":
                raw, offset = raw[3:], 3
            try:
                yield raw.decode(name)
            except UnicodeDecodeError as error:
                bad = raw[error.start : error.end]
                raise _undecodable(path, number, offset + error.start, bad, name) from None
            offset += len(raw)
    finally:
        if source is None:
            handle.close()


def count_lines(path: Path, encoding: str | None = None) -> int:
    """Lines in the file, decoding every byte on the way: an encoding problem is found before any fetch."""
    return sum(1 for _ in text_lines(path, encoding))


def sniff_dialect(path: Path, encoding: str | None, delimiter: str | None) -> Dialect:
    if delimiter:
        return Dialect(parse_delimiter(delimiter))
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] == ".tsv":
        return Dialect("\t")
    sample, size = [], 0
    for line in text_lines(path, encoding):
        sample.append(line)
        size += len(line)
        if size >= SNIFF_BYTES:
            break
    header = sample[0] if sample else ""
    in_header = {d: header.count(d) for d in DELIMITERS if d in header}
    if not in_header:
        return Dialect(",")  # one column
    try:
        found = csv.Sniffer().sniff("".join(sample), delimiters=DELIMITERS).delimiter
    except csv.Error:
        found = ""
    if found not in in_header:  # the sniffer disagrees with the header: the header's commonest wins
        found = max(in_header, key=lambda d: in_header[d])
    return Dialect(found)


@dataclass
class Record:
    line: int
    fields: list[str] | None  # None when the record is broken
    error: str = ""


class _Feed:
    """Lines for one csv.reader, numbered, with lines pushed back re-read first.

    An iterator object rather than a generator: once the file has ended, lines pushed back after a broken
    last record must still be served, and a finished generator cannot resume.
    """

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = lines
        self.pending: deque[tuple[int, str]] = deque()
        self.taken: list[tuple[int, str]] = []
        self.number = 0

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        if self.pending:
            item = self.pending.popleft()
        else:
            line = next(self.lines, None)
            if line is None:
                raise StopIteration
            self.number += 1
            item = (self.number, line)
        self.taken.append(item)
        return item[1]

    def start(self) -> int:
        return self.taken[0][0] if self.taken else self.number

    def push_back(self) -> None:
        """Every line after the record's first is read again."""
        self.pending.extendleft(reversed(self.taken[1:]))


def records(lines: Iterator[str], dialect: Dialect, width: Callable[[], int]) -> Iterator[Record]:
    """Records numbered by the line they start on; a record broken across lines costs only its first line.

    `width()` is the header's field count (0 while the header itself is read): a multi-line record with
    more fields than that is taken to be a stray quote, not a field with a line break.
    """
    feed = _Feed(lines)
    if dialect.quotechar is None:
        reader = csv.reader(feed, delimiter=dialect.delimiter, quoting=csv.QUOTE_NONE, strict=True)
    else:
        reader = csv.reader(feed, delimiter=dialect.delimiter, quotechar=dialect.quotechar, strict=True)
    while True:
        feed.taken.clear()
        try:
            fields = next(reader)
        except StopIteration:
            if feed.taken:  # the file ended inside a quoted field
                first = feed.start()
                feed.push_back()
                yield Record(first, None, "unterminated quote")
                continue
            return
        except csv.Error as error:
            first, spanned = feed.start(), len(feed.taken)
            feed.push_back()  # re-read the lines a stray quote pulled in
            message = f"a quote opened on this line is not closed properly ({error})" if spanned > 1 else str(error)
            yield Record(first, None, message)
            continue
        if not fields:
            continue
        expected = width()
        if len(feed.taken) > 1 and expected and len(fields) > expected:
            first, spanned = feed.start(), len(feed.taken)
            feed.push_back()
            yield Record(first, None, f"a quote opened here runs over {spanned} lines")
            continue
        yield Record(feed.start(), fields)
