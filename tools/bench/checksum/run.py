"""Checksum throughput: `taxonstream checksum` against sum-buddy and against Python's hashlib on one core.

    .venv/bin/python tools/bench/checksum/run.py [--size-mb 400] [--algorithm md5] [--repeat 3]

Generates (once, reused while its parameters match) a folder of specimen-photo-sized random files under
/tmp, reads it once so every contestant finds it in the page cache, then times, interleaved, `--repeat`
times each:

  hashlib 1 core   this process, the same files in the same order, 1 MiB reads: the single-core ceiling
  sum-buddy        the real one (PyPI, in .stack/sumbuddy-venv; installed there if missing), -o FILE
  taxonstream      `taxonstream checksum -o FILE` (worker processes on every core), end to end
  in process       the same walk, hashing and CSV (`checksum_to_csv`) called in this process: taxonstream
                   without the command's start-up (Python, and the imports of every subcommand); with worker
                   processes (the default) and, for the record, with threads

and checks that taxonstream's CSV is byte-identical to sum-buddy's. The goal of the issue is
taxonstream ≥ 0.9 × cores × hashlib-single-core; the ratio to it is printed. Best-of-N times are reported
(the least disturbed run of each). On a shared machine the cores may not all be free: the run also measures
what `cores` processes hashing memory (no files, no Python per-file work) reach at the same time, the real
ceiling for any parallel checksummer there, and prints taxonstream's ratio to that too, and the CPU time
each contestant used (its own and its children's): hashlib's CPU time over taxonstream's bounds what
taxonstream reaches, as a fraction of cores × one core, when the cores are free.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
VENV = REPO / ".stack" / "sumbuddy-venv"
TAXONSTREAM = REPO / ".venv" / "bin" / "taxonstream"


def sum_buddy() -> Path:
    """sum-buddy in its own venv (never the project's): the PyPI release, pathspec pinned to the project's so
    both compile ignore patterns the same way. Installed the first time (pip: 300 s at most); a failed install
    leaves no half-made venv and raises (CalledProcessError / TimeoutExpired). tests/unit uses this too."""
    wanted = f"sum-buddy==1.0.0\npathspec=={importlib.metadata.version('pathspec')}"
    marker = VENV / "installed.txt"
    if not (marker.exists() and marker.read_text() == wanted):
        print("installing sum-buddy into", VENV, file=sys.stderr)
        shutil.rmtree(VENV, ignore_errors=True)
        VENV.parent.mkdir(exist_ok=True)
        python = str(VENV / "bin" / "python")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=120)
            pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *wanted.split()]
            subprocess.run(pip, check=True, capture_output=True, text=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            shutil.rmtree(VENV, ignore_errors=True)
            raise
        marker.write_text(wanted)
    return VENV / "bin" / "sum-buddy"


def generate(root: Path, size_mb: int, seed: int, small: bool) -> list[Path]:
    """Files of 20 KB–8 MB (log-uniform, like JPEG specimen photos; `small`: 4–64 KB thumbnails), in nested
    folders, about size_mb in all."""
    stamp = root / ".params.json"
    params = {"size_mb": size_mb, "seed": seed, "small": small, "version": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if root.exists():
        subprocess.run(["rm", "-rf", str(root)], check=True)
    rng = random.Random(seed)
    total, n = 0, 0
    while total < size_mb << 20:
        size = int(10 ** (rng.uniform(3.6, 4.8) if small else rng.uniform(4.3, 6.9)))
        folder = root / f"provider{n % 7}" / f"batch{n % (23 * (20 if small else 1)):03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"IMG_{n:05d}.jpg").write_bytes(os.urandom(size))
        total += size
        n += 1
    stamp.write_text(json.dumps(params))
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


def hashlib_single_core(files: list[Path], algorithm: str) -> None:
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    for path in files:
        state = hashlib.new(algorithm)
        with open(path, "rb", buffering=0) as handle:
            while n := handle.readinto(buffer):
                state.update(view[:n])
        state.hexdigest()


def _hash_memory(megabytes: int, algorithm: str) -> None:
    block = bytes(1 << 20)
    for _ in range(megabytes):
        hashlib.new(algorithm, block).hexdigest()


def parallel_ceiling(workers: int, megabytes: int, algorithm: str) -> float:
    """MB/s of `workers` processes hashing memory: what this machine's cores deliver right now, no I/O at all.

    The pool is gone again before the contestants run, so this process has no extra thread (which would
    make taxonstream's pool use a fork server instead of plain fork)."""
    share = max(1, megabytes // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(_hash_memory, [1] * workers, [algorithm] * workers))  # workers started
        started = time.perf_counter()
        list(pool.map(_hash_memory, [share] * workers, [algorithm] * workers))
        return share * workers / (time.perf_counter() - started)


def _cpu_seconds() -> float:
    """CPU time of this process and of every child it has waited for (subprocesses, joined workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    cpu, started = _cpu_seconds(), time.perf_counter()
    function()
    return time.perf_counter() - started, _cpu_seconds() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=400)
    parser.add_argument("--small", action="store_true", help="thumbnails (4-64 KB) instead of photos: per-file cost")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/taxonstream-bench-checksum"))
    parser.add_argument("--algorithm", default="md5")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from taxonstream.integrity.checksums import available_cpus
    from taxonstream.integrity.sumbuddy import checksum_to_csv, plan

    cores = available_cpus()
    data = args.dir / ("thumbnails" if args.small else "photos")
    files = generate(data, args.size_mb, seed=1, small=args.small)
    entries = plan(str(data))
    ordered = [Path(e.filepath) for e in entries]
    megabytes = sum(e.size for e in entries) / 1e6
    print(f"{len(entries)} files, {megabytes:.0f} MB in {data}; {cores} cores; algorithm {args.algorithm}")
    load_before = os.getloadavg()  # other work on the machine: the figures mean little when it is high
    for path in files:  # into the page cache, so every contestant reads memory, not disk
        path.read_bytes()

    sb = sum_buddy()
    # Both commands run as installed programs do, with their bytecode cached (pip compiled sum-buddy's at
    # install; the editable taxonstream writes its cache on the first run), even where the caller's
    # environment turns the cache off: compiling the sources again cost taxonstream ~20 ms a start.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    ours_csv, theirs_csv = args.dir / "taxonstream.csv", args.dir / "sumbuddy.csv"

    def run_sum_buddy() -> None:
        theirs_csv.unlink(missing_ok=True)
        subprocess.run(
            [str(sb), "-a", args.algorithm, "-o", str(theirs_csv), str(data)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )

    def run_taxonstream() -> None:
        subprocess.run(
            [str(TAXONSTREAM), "checksum", "-f", "-a", args.algorithm, "-o", str(ours_csv), str(data)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )

    def in_process(backend: str) -> None:
        checksum_to_csv(
            str(data), str(args.dir / f"{backend}.csv"), algorithm=args.algorithm, workers=cores, backend=backend
        )  # type: ignore[arg-type]
        (args.dir / f"{backend}.csv").unlink()

    contestants = {
        "hashlib, 1 core": lambda: hashlib_single_core(ordered, args.algorithm),
        "sum-buddy": run_sum_buddy,
        "taxonstream checksum": run_taxonstream,
        f"in process, {cores} processes": lambda: in_process("process"),
        f"in process, {cores} threads": lambda: in_process("thread"),
    }
    best = {name: float("inf") for name in contestants}
    cpu = {name: float("inf") for name in contestants}
    ceiling = 0.0
    for _ in range(args.repeat):
        for name, function in contestants.items():
            wall, used = timed(function)
            best[name], cpu[name] = min(best[name], wall), min(cpu[name], used)
        ceiling = max(ceiling, parallel_ceiling(cores, int(megabytes), args.algorithm))
    identical = ours_csv.read_bytes() == theirs_csv.read_bytes()
    load_after = os.getloadavg()

    single = megabytes / best["hashlib, 1 core"]
    goal = 0.9 * cores * single
    print(f"\n{'':<32}{'seconds':>9}{'MB/s':>9}{'CPU s':>9}{'MB/CPU s':>10}")
    for name, seconds in best.items():
        print(f"{name:<32}{seconds:>9.2f}{megabytes / seconds:>9.0f}{cpu[name]:>9.2f}{megabytes / cpu[name]:>10.0f}")
    ours = megabytes / best["taxonstream checksum"]
    print(
        f"\ngoal 0.9 × {cores} cores × {single:.0f} MB/s = {goal:.0f} MB/s; taxonstream {ours:.0f} MB/s "
        f"= {ours / goal:.2f} × goal, {ours / (megabytes / best['sum-buddy']):.1f} × sum-buddy"
    )
    print(
        f"what {cores} processes hashing memory (no files) reach on this machine now: {ceiling:.0f} MB/s "
        f"= {ceiling / single:.2f} × one core; taxonstream = {ours / (0.9 * ceiling):.2f} × 0.9 × that"
    )
    base = cpu["hashlib, 1 core"]
    for name in ("taxonstream checksum", f"in process, {cores} processes"):
        print(
            f"CPU: hashlib {base:.2f} s, {name} {cpu[name]:.2f} s (walk, workers, CSV"
            f"{', command start-up' if 'checksum' in name else ''}): on {cores} free cores it could reach "
            f"at most {base / cpu[name]:.2f} × {cores} × one core"
        )
    print(f"taxonstream CSV byte-identical to sum-buddy's: {identical}")
    print(
        f"load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
        f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} (the run itself adds ~1-2)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "files": len(entries),
                    "megabytes": megabytes,
                    "cores": cores,
                    "algorithm": args.algorithm,
                    "seconds": best,
                    "goal_mb_s": goal,
                    "taxonstream_mb_s": ours,
                    "identical": identical,
                    "parallel_memory_ceiling_mb_s": ceiling,
                    "cpu_seconds": cpu,
                    "load_average_before": load_before,
                    "load_average_after": load_after,
                },
                indent=2,
            )
        )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
