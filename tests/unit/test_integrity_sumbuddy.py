"""`taxonstream checksum` writes exactly what sum-buddy writes.

Two kinds of evidence:
- live: the real sum-buddy (PyPI 1.0.0, installed once into `.stack/sumbuddy-venv`, never into the project's
  venv) and our command on the same generated tree — nested, hidden, ignored, odd names, multi-megabyte files —
  must produce identical bytes. Skipped, saying why, only if the package index cannot be reached.
- golden: outputs of sum-buddy committed under `data/integrity/` (see its README), including ZIP members, which
  only sum-buddy's main branch hashes so far.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tools.bench.checksum.run import sum_buddy as install_sum_buddy

DATA = Path(__file__).parent / "data" / "integrity"
TAXONSTREAM = [sys.executable, "-m", "taxonstream.cli.main"]


@pytest.fixture(scope="session")
def sum_buddy() -> Path:
    """The sum-buddy executable, installing it into its own venv the first time (cached under .stack/)."""
    try:
        return install_sum_buddy()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        detail = getattr(error, "stderr", "") or ""
        pytest.skip(f"could not install sum-buddy for the live comparison ({error}); {detail[-300:]}")


def _tree(root: Path) -> None:
    """Nested folders, hidden files and folders, files an ignore file drops, odd names, a few MB-sized files."""
    rng = random.Random(7)
    names = ["a.jpg", "b.png", "c d.tif", "e,f.txt", 'g"h.txt', "spécimen.jpg", "x.log", "y.raw", ".hidden", ".DS"]
    folders = ["", "sub", "sub/deeper", "sub/deeper/deepest", ".git", ".git/objects", "sub/.cache", "raw", "other"]
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in rng.sample(names, 6):
            size = rng.choice([0, 1, 100, 5000, 70_000, 1_500_000, 3_200_000])
            (root / folder / name).write_bytes(rng.randbytes(size))
    (root / "sub" / "deeper" / "deepest" / "pics.zip").write_bytes(rng.randbytes(100))  # named .zip, not a ZIP


IGNORE = "# a comment, then a blank line\n\n*.log\nraw/\n!raw/keep.raw\nsub/**/*.png\n/other/a.jpg\n"

CASES = {
    "default": [],
    "include-hidden": ["-H"],
    "ignore-file": ["-i", "IGNORE"],
    "sha256": ["-a", "sha256"],
    "sha1": ["-a", "sha1"],
    "sha3_512": ["-a", "sha3_512"],
    "shake_128": ["-a", "shake_128", "-l", "20"],
    "blake2b-20": ["-a", "blake2b", "-l", "20"],
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    _tree(tmp_path / "data")
    (tmp_path / "ignore.txt").write_text(IGNORE)
    return tmp_path


def _run(command: list[str], cwd: Path) -> bytes:
    result = subprocess.run(command, cwd=cwd, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_stdout_is_byte_identical_to_sum_buddy(sum_buddy: Path, tree: Path, case: str) -> None:
    options = [a.replace("IGNORE", "ignore.txt") for a in CASES[case]]
    theirs = _run([str(sum_buddy), *options, "data"], tree)
    ours = _run([*TAXONSTREAM, "checksum", "-j", "2", *options, "data"], tree)
    assert theirs.count(b"\r\n") > 10
    assert ours == theirs


def test_output_file_absolute_paths_and_one_worker_match_too(sum_buddy: Path, tree: Path) -> None:
    data = str(tree / "data")
    _run([str(sum_buddy), "-a", "blake2s", "-o", str(tree / "theirs.csv"), data], tree)
    _run([*TAXONSTREAM, "checksum", "-j", "1", "-a", "blake2s", "-o", str(tree / "ours.csv"), data], tree)
    assert (tree / "ours.csv").read_bytes() == (tree / "theirs.csv").read_bytes()


def test_an_output_file_inside_the_tree_is_left_out_like_sum_buddy(sum_buddy: Path, tree: Path) -> None:
    (tree / "data" / "sums.csv").write_text("old\n")
    theirs = _run([str(sum_buddy), "data"], tree)  # to stdout: sums.csv is listed
    assert b"data/sums.csv" in theirs
    _run([*TAXONSTREAM, "checksum", "-f", "-o", "data/sums.csv", "data"], tree)
    ours = (tree / "data" / "sums.csv").read_bytes()
    assert ours == b"".join(line for line in theirs.splitlines(keepends=True) if b"data/sums.csv" not in line)


def test_a_single_file_is_hashed_as_itself(sum_buddy: Path, tree: Path) -> None:
    path = "data/sub/deeper/deepest/pics.zip"
    assert _run([*TAXONSTREAM, "checksum", path], tree) == _run([str(sum_buddy), path], tree)


def test_input_paths_are_normalised_as_sum_buddy_main_does(tree: Path) -> None:
    # sum-buddy normalises paths since its main branch's #39 (PyPI 1.0.0 printed them as given).
    out = _run([*TAXONSTREAM, "checksum", "./data/sub/../sub/deeper/deepest/pics.zip"], tree).decode()
    assert out.splitlines()[1].startswith("data/sub/deeper/deepest/pics.zip,pics.zip,")
    out = _run([*TAXONSTREAM, "checksum", "./data//sub/"], tree).decode()
    assert all(line.lstrip('"').startswith("data/sub/") for line in out.splitlines()[1:])


def test_an_ignore_file_replaces_the_hidden_rule(tree: Path) -> None:
    out = _run([*TAXONSTREAM, "checksum", "-i", "ignore.txt", "data"], tree).decode()
    assert "data/x.log" not in out and "/.git/" in out  # -i replaces the hidden rule instead of adding to it
    assert not any(line.startswith("data/raw/") for line in out.splitlines())
    default = _run([*TAXONSTREAM, "checksum", "data"], tree).decode()
    assert "/.git/" not in default and "/.hidden" not in default and "/.cache/" not in default


@pytest.mark.parametrize(
    ("golden", "options"),
    [
        ("zip_tree.md5.csv", ["zip_tree"]),
        ("zip_tree.no-archive-dive.md5.csv", ["--no-archive-dive", "zip_tree"]),
        ("zip_tree.sha256.csv", ["-a", "sha256", "zip_tree"]),
        ("single_zip.md5.csv", ["zip_tree/pics.zip"]),
    ],
)
def test_zip_members_match_sum_buddy_golden_output(golden: str, options: list[str]) -> None:
    ours = _run([*TAXONSTREAM, "checksum", *options], DATA)
    assert ours == (DATA / golden).read_bytes()
    if golden == "zip_tree.md5.csv":  # members are listed, hidden and __MACOSX ones included, directories not
        assert b"zip_tree/pics.zip/__MACOSX/._file.txt," in ours and b"zip_tree/pics.zip/dir/," not in ours


@pytest.mark.parametrize(
    ("golden", "options"),
    [
        ("hidden_tree.default.md5.csv", []),
        ("hidden_tree.H.md5.csv", ["-H"]),
        ("hidden_tree.i.md5.csv", ["-i", "hidden_tree.sbignore"]),
    ],
)
def test_hidden_and_ignored_files_match_sum_buddy_golden_output(golden: str, options: list[str]) -> None:
    ours = _run([*TAXONSTREAM, "checksum", *options, "hidden_tree"], DATA)
    expected = (DATA / golden).read_bytes()
    # Same header and rows; the order is the file system's listing order, which git does not preserve.
    assert ours.splitlines(keepends=True)[0] == expected.splitlines(keepends=True)[0]
    assert sorted(ours.splitlines(keepends=True)) == sorted(expected.splitlines(keepends=True))
    walked = [os.path.normpath(os.path.join(d, f)) for d, _, fs in os.walk(DATA / "hidden_tree") for f in fs]
    listed = [line.split(b",")[0].decode() for line in ours.splitlines()[1:] if not line.startswith(b'"')]
    order = [str(Path(p).relative_to(DATA)) for p in walked if str(Path(p).relative_to(DATA)) in listed]
    assert listed == order


def test_errors_are_sum_buddys_messages_and_an_existing_output_needs_force(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = subprocess.run([*TAXONSTREAM, "checksum", "empty"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1 and "contain no files" in result.stderr
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / ".only").write_text("x")
    result = subprocess.run([*TAXONSTREAM, "checksum", "hidden"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1 and "all are filtered out" in result.stderr
    result = subprocess.run(
        [*TAXONSTREAM, "checksum", "-a", "shake_256", "hidden"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 1 and "Length parameter [bytes] is required" in result.stderr
    (tmp_path / "out.csv").write_text("keep me")
    result = subprocess.run(
        [*TAXONSTREAM, "checksum", "-H", "-o", "out.csv", "hidden"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 1 and "already exists" in result.stderr
    assert (tmp_path / "out.csv").read_text() == "keep me"
    result = subprocess.run(
        [*TAXONSTREAM, "checksum", "-H", "-f", "-o", "out.csv", "hidden"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0 and "written to out.csv" in result.stdout
    assert (tmp_path / "out.csv").read_bytes().startswith(b"filepath,filename,md5\r\nhidden/.only,.only,")


def test_an_unreadable_file_fails_the_run_and_leaves_no_partial_output(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ok.txt").write_text("fine")
    os.symlink(tmp_path / "nowhere", tmp_path / "data" / "dangling.txt")
    result = subprocess.run(
        [*TAXONSTREAM, "checksum", "-o", "out.csv", "data"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 1 and "dangling.txt" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_parquet_output_has_the_same_rows(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    _run([*TAXONSTREAM, "checksum", "-o", str(tmp_path / "sums.parquet"), "zip_tree"], DATA)
    rows = pq.read_table(tmp_path / "sums.parquet").to_pylist()
    golden = (DATA / "zip_tree.md5.csv").read_text().splitlines()
    assert [",".join(r.values()) for r in rows if "," not in r["filepath"]] == [
        line for line in golden[1:] if '"' not in line
    ]
    assert list(rows[0]) == ["filepath", "filename", "md5"]
