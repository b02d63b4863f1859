"""Checksums of bytes, files and ZIP members with any hashlib algorithm, spread over every core.

Why processes by default: hashlib drops the GIL only while hashing one buffer of 2 KiB or more, and every
file also costs Python work (open, stat, loop, result) that holds it; with thousands of small specimen
photos that per-file work is what serialises threads. Worker processes share nothing, so N cores give
close to N times one core (`tools/bench/checksum` measures both backends). Work goes out in batches of
files (by bytes and count) so the per-task cost of a process pool is paid per batch, not per file, while
the folder is still being walked; results come back in submission order so output is deterministic.

Algorithm rules follow sum-buddy: any name in `hashlib.algorithms_available`; shake_* need a digest length
in bytes; blake2b/blake2s take an optional digest size; fixed-length algorithms refuse a length.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import threading
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple, Protocol, TypeVar

Backend = Literal["process", "thread", "serial"]
R = TypeVar("R")

# Read size: large enough that hashing, not the read loop, dominates; small enough to stay in L2.
BUFFER_SIZE = 1 << 20
# Below this many bytes in all, hashing in this process beats starting a fork server and workers (~0.3 s).
SERIAL_BELOW = 64 << 20
BATCH_BYTES = 4 << 20
BATCH_ITEMS = 128
SHAKE = frozenset({"shake_128", "shake_256"})
BLAKE_MAX = {"blake2b": 64, "blake2s": 32}


class ChecksumError(ValueError):
    """A bad algorithm/length choice, or a file that cannot be read."""


@dataclass(frozen=True)
class Algorithm:
    """One hashlib algorithm with its digest length (shake: required; blake2: optional; others: none)."""

    name: str
    length: int | None = None

    @classmethod
    def parse(cls, name: str, length: int | None = None) -> Algorithm:
        if name not in hashlib.algorithms_available:
            raise ChecksumError(
                f"Unsupported algorithm '{name}' (available: {', '.join(sorted(hashlib.algorithms_available))})"
            )
        if name in SHAKE:
            if length is None or length < 1:
                raise ChecksumError(f"Length parameter [bytes] is required for algorithm '{name}'")
        elif name in BLAKE_MAX:
            if not length:  # sum-buddy treats 0 like absent: the algorithm's full digest size
                length = None
            elif not 1 <= length <= BLAKE_MAX[name]:
                raise ChecksumError(f"{name} digest length must be 1..{BLAKE_MAX[name]} bytes, not {length}")
        elif length is not None:
            raise ChecksumError(f"Length parameter is not applicable for fixed-length algorithm '{name}'.")
        return cls(name, length)

    def new(self) -> Any:
        if self.name in BLAKE_MAX and self.length:
            return hashlib.new(self.name, digest_size=self.length)
        return hashlib.new(self.name)

    def hexdigest(self, state: Any) -> str:
        return state.hexdigest(self.length) if self.name in SHAKE else state.hexdigest()


def parse_algorithms(names: Iterable[str]) -> tuple[Algorithm, ...]:
    """Several fixed-length algorithms by name (shake_* get 32 bytes, as strong as sha256)."""
    return tuple(Algorithm.parse(n, 32 if n in SHAKE else None) for n in names)


def digest_bytes(data: bytes | memoryview, algorithms: Sequence[Algorithm]) -> dict[str, str]:
    """Hex digests of in-memory bytes, keyed by algorithm name."""
    out = {}
    for algorithm in algorithms:
        state = algorithm.new()
        state.update(data)
        out[algorithm.name] = algorithm.hexdigest(state)
    return out


def digest_stream(stream: BinaryIO, algorithms: Sequence[Algorithm], buffer: bytearray | None = None) -> FileDigest:
    """Digests of everything left in a binary stream, read once however many algorithms there are."""
    states = [a.new() for a in algorithms]
    buffer = buffer if buffer is not None else bytearray(BUFFER_SIZE)
    view = memoryview(buffer)
    size = 0
    readinto = getattr(stream, "readinto", None)
    while True:
        if readinto is not None:
            n = readinto(buffer)
            chunk = view[:n]
        else:
            chunk = stream.read(len(buffer))
            n = len(chunk)
        if not n:
            break
        size += n
        for state in states:
            state.update(chunk)
    return FileDigest({a.name: a.hexdigest(s) for a, s in zip(algorithms, states, strict=True)}, size)


class Item(NamedTuple):
    """What to hash: a file, or (with `member`) one member of a ZIP file."""

    path: str
    member: str | None = None


class FileDigest(NamedTuple):
    digests: dict[str, str]
    size: int
    error: str | None = None


def _digest_batch(batch: Sequence[Item], algorithms: Sequence[Algorithm]) -> list[FileDigest]:
    """Runs in a worker: digests of each item, or an error message for that item (the batch goes on)."""
    buffer = bytearray(BUFFER_SIZE)
    archives: dict[str, zipfile.ZipFile] = {}
    results = []
    try:
        for item in batch:
            try:
                if item.member is None:
                    with open(item.path, "rb", buffering=0) as handle:
                        results.append(digest_stream(handle, algorithms, buffer))
                else:
                    archive = archives.get(item.path)
                    if archive is None:
                        archive = archives[item.path] = zipfile.ZipFile(item.path)
                    with archive.open(item.member) as handle:  # by name, as sum-buddy does
                        results.append(digest_stream(handle, algorithms, buffer))
            except (OSError, RuntimeError, zipfile.BadZipFile, KeyError, EOFError) as error:
                where = item.path if item.member is None else f"{item.path}/{item.member}"
                results.append(FileDigest({}, 0, f"{where}: {error}"))
    finally:
        for archive in archives.values():
            archive.close()
    return results


def available_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a Kubernetes limit)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period) + 0.5)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _fork_is_safe() -> bool:
    return threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()


class Work(Protocol):
    """A unit of work: what to read, and about how many bytes it is (to size batches)."""

    @property
    def item(self) -> Item: ...
    @property
    def size(self) -> int: ...


class Unit(NamedTuple):
    item: Item
    size: int = 0


W = TypeVar("W", bound=Work)


def _batches(work: Iterable[W]) -> Iterator[list[W]]:
    """Consecutive runs of about BATCH_BYTES or BATCH_ITEMS, whichever comes first, as the work arrives.

    Small enough that every core stays busy to the end (and the walk and the hashing overlap from the first
    batch); large enough that a batch's dispatch (~0.2 ms) is a few percent of its hashing time.
    """
    batch: list[W] = []
    batch_bytes = 0
    for unit in work:
        batch.append(unit)
        batch_bytes += unit.size
        if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_ITEMS:
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


class WorkerPool:
    """Runs a batch function over items on every core, results in input order; a context manager.

    `workers=1` or backend "serial" runs in this process with no pool at all.
    """

    def __init__(self, workers: int | None = None, backend: Backend = "process") -> None:
        self.workers = workers or available_cpus()
        self.backend: Backend = "serial" if self.workers == 1 else backend
        self._pool: Executor | None = None

    def __enter__(self) -> WorkerPool:
        if self.backend == "process" and _fork_is_safe():
            # No other thread yet (the CLI enters the pool before tqdm starts its monitor): fork the workers now.
            # They start at once with everything imported, and no other thread can have held a lock they copy.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
            self._pool.submit(os.getpid).result()  # with fork, the first task launches every worker
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _executor(self, module: str) -> Executor:
        if self._pool is None:
            if self.backend == "process":
                # Other threads run (a gRPC server, say), and forking could copy a lock one of them holds: workers
                # come from a fork server instead. It imports the main script and the batch function's module
                # once; without "__main__" there, every worker would re-run the script's imports (0.2-0.5 s each).
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(["__main__", module])
                self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
            else:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="integrity")
        return self._pool

    def map_batches(
        self, function: Callable[..., list[R]], work: Iterable[W], *args: Any, serial_below: int = 0
    ) -> Iterator[tuple[W, R]]:
        """(unit, result) for each unit, in order: `function([unit.item, …], *args)` runs on batches of them.

        `work` may be a generator (a folder still being walked): batches go out as they fill. `function` must be
        module-level (worker processes get it by name). When no workers are running yet and all the work comes to
        less than `serial_below` bytes, it runs here: starting workers would take longer than the work.
        """
        work = iter(work)
        head: list[W] = []
        if self.backend != "serial" and self._pool is None and serial_below:
            seen = 0
            for unit in work:
                head.append(unit)
                seen += unit.size
                if seen >= serial_below:
                    break
            else:  # the whole of it is small
                for batch in _batches(head):
                    yield from zip(batch, function([u.item for u in batch], *args), strict=True)
                return
        stream = itertools.chain(head, work)
        if self.backend == "serial":
            for batch in _batches(stream):
                yield from zip(batch, function([u.item for u in batch], *args), strict=True)
            return
        pool = self._executor(function.__module__)
        pending: deque[tuple[list[W], Future[list[R]]]] = deque()
        window = self.workers * 4  # enough queued work to keep every worker busy, bounded memory
        for batch in _batches(stream):
            pending.append((batch, pool.submit(function, [u.item for u in batch], *args)))
            if len(pending) >= window:
                done, future = pending.popleft()
                yield from zip(done, future.result(), strict=True)
        while pending:
            done, future = pending.popleft()
            yield from zip(done, future.result(), strict=True)


def digest_entries(
    work: Iterable[W], algorithms: Sequence[Algorithm], pool: WorkerPool | None = None
) -> Iterator[tuple[W, FileDigest]]:
    """(unit, FileDigest) for each unit of work, in order; failures carry `error` instead of digests."""
    with WorkerPool() if pool is None else nullcontext(pool) as chosen:
        yield from chosen.map_batches(_digest_batch, work, tuple(algorithms), serial_below=SERIAL_BELOW)


def digest_items(
    items: Sequence[Item],
    algorithms: Sequence[Algorithm],
    sizes: Sequence[int] | None = None,
    pool: WorkerPool | None = None,
) -> Iterator[FileDigest]:
    """One FileDigest per item, in the order given; failures carry `error` instead of digests."""
    units = [Unit(item, size) for item, size in zip(items, sizes or [0] * len(items), strict=True)]
    for _, result in digest_entries(units, algorithms, pool):
        yield result
