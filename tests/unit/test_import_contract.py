"""The package import contract ([tool.importlinter] in pyproject.toml) holds, and it can fail.

The rule (docs/architecture.md): services and the cli on top, independent of each other -> libraries
-> core -> v1; nothing imports a service or the cli; no import cycles between library packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = REPO / ".venv" / "bin" / "lint-imports"


def run_lint_imports(cwd: Path, source_root: Path, contract: str | None = None) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH comes before site-packages, so it wins over the editable install's path to services/.
    # --no-cache: no .import_linter_cache folder left in the checkout.
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    only = ["--contract", contract] if contract else []
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", *only], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module", autouse=True)
def lint_imports_is_installed() -> None:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: .venv/bin/pip install -e '.[dev]' installs import-linter")


def test_the_checkout_keeps_every_contract():
    result = run_lint_imports(REPO, REPO / "services")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout, result.stdout


def copy_source_tree(tmp_path: Path) -> Path:
    """A copy of the source root and the contract, so a deliberate violation never touches the checkout."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    source_root = tmp_path / "services"
    shutil.copytree(
        REPO / "services" / "taxonstream",
        source_root / "taxonstream",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return source_root


def add_import(module_file: Path, import_line: str) -> None:
    module_file.write_text(module_file.read_text() + f"\n{import_line}  # deliberate violation\n")


@pytest.mark.parametrize(
    ("module", "import_line", "broken_contract", "kept_contract"),
    [
        # The core reaching up into a service (also a cycle: the fetcher imports the core).
        ("core/bus.py", "import taxonstream.fetcher", "rooms", None),
        # A library reaching up into the cli.
        ("integrity/checksums.py", "import taxonstream.cli.main", "rooms", None),
        # One service importing another: siblings in the top layer are independent, and no cycle is needed.
        ("indexer/__init__.py", "import taxonstream.embedder", "rooms", "libraries-acyclic"),
        # v1 (generated) must not import the core above it.
        ("v1/__init__.py", "import taxonstream.core.errors", "rooms", None),
        # export already imports index; index importing export closes a cycle between two libraries,
        # which the layers contract allows (libraries may import each other) and the acyclic one does not.
        ("index/__init__.py", "import taxonstream.export", "libraries-acyclic", "rooms"),
    ],
)
def test_a_deliberate_violation_breaks_the_contract_that_forbids_it(
    tmp_path: Path, module: str, import_line: str, broken_contract: str, kept_contract: str | None
):
    source_root = copy_source_tree(tmp_path)
    add_import(source_root / "taxonstream" / module, import_line)

    broken = run_lint_imports(tmp_path, source_root, contract=broken_contract)
    assert broken.returncode != 0, broken.stdout
    assert "0 kept, 1 broken" in broken.stdout, broken.stdout
    # The report names the offending import, so the fix is obvious from the output alone.
    imported_package = import_line.split()[1].split(".")[1]
    assert f"taxonstream.{imported_package}" in broken.stdout or f".{imported_package}" in broken.stdout

    if kept_contract:
        kept = run_lint_imports(tmp_path, source_root, contract=kept_contract)
        assert kept.returncode == 0, kept.stdout


def test_a_new_top_level_package_must_be_placed_in_a_layer(tmp_path: Path):
    # exhaustive = true: a room nobody added to the contract is itself a broken contract.
    source_root = copy_source_tree(tmp_path)
    (source_root / "taxonstream" / "unplaced_room").mkdir()
    (source_root / "taxonstream" / "unplaced_room" / "__init__.py").write_text("")

    result = run_lint_imports(tmp_path, source_root)

    assert result.returncode != 0, result.stdout
    assert "taxonstream.unplaced_room" in result.stdout, result.stdout
