"""The fetch engine in several processes, each owning a share of the hosts.

One process runs its Python (HTTP parsing, bookkeeping) under one GIL; on a machine with several cores
the per-image work is spread further by giving each process its own hosts. A host always belongs to
the same process (the least loaded one when the host is first seen), so per-host politeness needs no
coordination between them — the same reason the records topic is keyed by host. Images are stored by
the process that fetched them (`store` must therefore be picklable); only small results travel back.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from taxonstream.fetching.engine import FetchEngine, Result, Summary, Task, wait_for
from taxonstream.fetching.safety import host_of
from taxonstream.fetching.settings import FetcherSettings

BATCH = 64  # tasks per queue message: pickling one at a time costs more than the fetch bookkeeping


class Owners:
    """Which process owns each host: the least loaded one when the host is first seen, then always that one.

    Not a hash of the name: with a handful of big hosts a hash easily puts three of four in one process.
    """

    def __init__(self, shards: int) -> None:
        self.owner: dict[str, int] = {}
        self.load = [0] * shards

    def shard(self, url: str) -> int:
        try:
            host = host_of(url)
        except ValueError:
            host = ""
        shard = self.owner.get(host)
        if shard is None:
            shard = self.owner[host] = self.load.index(min(self.load))
        self.load[shard] += 1
        return shard


def _shard_main(index: int, settings: dict, store: Callable[[Result], Any] | None, inbox, outbox, stop) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    engine = FetchEngine(FetcherSettings(**settings), store=store, on_result=lambda r: outbox.put(("result", r)))

    def watch() -> None:  # tasks already taken in must not be started after a stop either
        # Polled, not stop.wait(): Event.set() in the parent waits for every sleeping waiter to wake,
        # which a busy or exiting worker process may never do.
        while not stop.is_set():
            time.sleep(0.2)
        engine.stop()

    threading.Thread(target=watch, name="fetch-stop", daemon=True).start()

    def tasks() -> Iterator[Task]:
        while True:
            if stop.is_set():
                return
            try:
                batch = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            if batch is None:
                return
            yield from batch

    error = None
    hosts = []
    try:
        hosts = engine.run(tasks()).hosts
    except BaseException as caught:  # noqa: BLE001 - reported to the parent, which re-raises
        error = f"{type(caught).__name__}: {caught}"
    finally:
        engine.close()
        outbox.put(("done", index, hosts, error))


class ShardedEngine:
    """`FetchEngine`'s interface (run, stop, summary), over `processes` worker processes."""

    def __init__(
        self,
        settings: FetcherSettings,
        processes: int,
        store: Callable[[Result], Any] | None = None,
        on_result: Callable[[Result], None] | None = None,
    ) -> None:
        self.processes = processes
        self.store = store
        self.on_result = on_result
        per_process = max(1, -(-settings.fetch_max_connections // processes))
        self.settings = {**settings.model_dump(), "fetch_max_connections": per_process}
        # spawn: a clean interpreter per worker, whatever threads the caller has running.
        self.context = multiprocessing.get_context("spawn")
        self.stop_event = self.context.Event()
        self.summary = Summary()
        self._lock = threading.Lock()

    def run(self, tasks: Iterable[Task]) -> Summary:
        outbox = self.context.Queue()
        inboxes = [self.context.Queue(maxsize=64) for _ in range(self.processes)]
        workers = [
            self.context.Process(
                target=_shard_main,
                args=(n, self.settings, self.store, inboxes[n], outbox, self.stop_event),
                name=f"fetch-shard-{n}",
                daemon=True,
            )
            for n in range(self.processes)
        ]
        for worker in workers:
            worker.start()
        errors: list[str] = []
        collected = threading.Event()
        collector = threading.Thread(
            target=self._collect, args=(outbox, workers, errors, collected), name="fetch-collect", daemon=True
        )
        collector.start()
        try:
            self._feed(tasks, inboxes, workers)
        except BaseException:
            self.stop()
            wait_for(collected)
            raise
        finally:
            for inbox in inboxes:
                with contextlib.suppress(ValueError, OSError, queue.Full):
                    inbox.put(None, timeout=5)
        try:
            wait_for(collected)
        except KeyboardInterrupt:
            self.stop()
            wait_for(collected)  # every result the workers still send is handed over before we return
            raise
        finally:
            for inbox in inboxes:  # after a stop, batches nobody will read must not hold up our exit
                inbox.cancel_join_thread()
        for worker in workers:
            worker.join(timeout=10)
        if errors:
            raise RuntimeError(f"a fetch worker process failed: {errors[0]}")
        return self.summary

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        pass

    def _feed(self, tasks: Iterable[Task], inboxes: list, workers: list) -> None:
        batches: list[list[Task]] = [[] for _ in inboxes]
        owners = Owners(self.processes)
        for task in tasks:
            if self.stop_event.is_set():
                return
            shard = owners.shard(task.url)
            batches[shard].append(task)
            if len(batches[shard]) >= BATCH:
                self._put(inboxes[shard], batches[shard], workers[shard])
                batches[shard] = []
        for shard, batch in enumerate(batches):
            if batch:
                self._put(inboxes[shard], batch, workers[shard])

    def _put(self, inbox, batch: list[Task], worker) -> None:
        while not self.stop_event.is_set():
            try:
                inbox.put(batch, timeout=0.5)
                return
            except queue.Full:
                if not worker.is_alive():
                    raise RuntimeError(f"fetch worker {worker.name} exited early ({worker.exitcode})") from None

    def _collect(self, outbox, workers: list, errors: list[str], collected: threading.Event) -> None:
        try:
            self._collect_until_done(outbox, workers, errors)
        except Exception as error:  # noqa: BLE001 - reported by run()
            errors.append(f"collecting results failed: {type(error).__name__}: {error}")
            self.stop()
        finally:
            collected.set()

    def _collect_until_done(self, outbox, workers: list, errors: list[str]) -> None:
        done = 0
        while done < len(workers):
            try:
                message = outbox.get(timeout=1.0)
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    errors.append("every fetch worker process ended without reporting")
                    return
                continue
            if message[0] == "result":
                self._finish(message[1])
            else:
                _, _, hosts, error = message
                done += 1
                self.summary.hosts.extend(hosts)
                if error:
                    errors.append(error)

    def _finish(self, result: Result) -> None:
        with self._lock:
            if result.ok:
                self.summary.stored += 1
            else:
                self.summary.failed += 1
                self.summary.reasons[result.reason] += 1
        if self.on_result is not None:
            self.on_result(result)
